//! SockJS framing (protocol 0.3.3), pure: the frames the server sends (`o`, `h`, `a[...]`,
//! `c[code,"reason"]`), how each receiving transport wraps them, and the client's message
//! arrays.
//!
//! Strings are JSON-encoded by hand because SockJS needs more escaped than JSON does: besides
//! control characters, the ranges some browsers and proxies mangle (zero-width and
//! bidirectional marks, line/paragraph separators, invisible operators, specials) go as
//! `\uXXXX`, as Spring's `AbstractSockJsMessageCodec` does. A STOMP frame's trailing NUL thus
//! travels as `\u0000`.

use std::fmt::Write as _;

/// The open frame, first thing every new session sends.
pub(crate) const OPEN: &str = "o";
/// The heartbeat frame.
pub(crate) const HEARTBEAT: &str = "h";

/// Why a client payload was refused (the texts are the protocol's).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    #[error("Payload expected.")]
    Empty,
    #[error("Broken JSON encoding.")]
    BrokenJson,
}

/// `a[...]`: messages for the client.
pub(crate) fn messages<S: AsRef<str>>(messages: &[S]) -> String {
    let mut out = String::with_capacity(8 + messages.iter().map(|m| m.as_ref().len() + 8).sum::<usize>());
    out.push_str("a[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, m.as_ref());
    }
    out.push(']');
    out
}

/// `c[code,"reason"]`: the session is closed.
pub(crate) fn close(code: u16, reason: &str) -> String {
    let mut out = format!("c[{code},");
    push_json_string(&mut out, reason);
    out.push(']');
    out
}

/// Whether SockJS wants `c` escaped even though JSON would not.
fn is_special(c: char) -> bool {
    matches!(c as u32,
        0x0000..=0x001F | 0x200C..=0x200F | 0x2028..=0x202F | 0x2060..=0x206F | 0xFFF0..=0xFFFF)
}

/// Appends `s` as a JSON string literal with SockJS's extra escapes.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_special(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The messages of an `xhr_send` body or a SockJS WebSocket message: a JSON array of strings
/// (a bare JSON string is accepted too, as Spring does for WebSocket messages).
pub(crate) fn decode_messages(payload: &[u8]) -> Result<Vec<String>, PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::BrokenJson)?.trim();
    if text.is_empty() {
        return Err(PayloadError::Empty);
    }
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text).map(|s| vec![s]).map_err(|_| PayloadError::BrokenJson);
    }
    serde_json::from_str::<Vec<String>>(text).map_err(|_| PayloadError::BrokenJson)
}

/// How one receiving transport puts frames on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wrap {
    /// `xhr` and `xhr_streaming`: the frame and a newline.
    Newline,
    /// `eventsource`: one server-sent event per frame.
    EventSource,
    /// `htmlfile`: one script calling the page's callback per frame.
    HtmlFile,
}

impl Wrap {
    pub(crate) fn frame(self, frame: &str) -> String {
        match self {
            Wrap::Newline => format!("{frame}\n"),
            Wrap::EventSource => format!("data: {frame}\r\n\r\n"),
            Wrap::HtmlFile => {
                let mut literal = String::with_capacity(frame.len() + 16);
                push_json_string(&mut literal, frame);
                // Inside a <script> element `</script>` would end it early.
                let literal = literal.replace('<', "\\u003c").replace('>', "\\u003e");
                format!("<script>\np({literal});\n</script>\r\n")
            }
        }
    }
}

/// The first bytes of an `xhr_streaming` response: 2 KiB of `h` so that browsers (old IE's
/// XHR among them) start handing the body to the page.
pub(crate) fn xhr_streaming_prelude() -> String {
    let mut s = "h".repeat(2048);
    s.push('\n');
    s
}

/// The first bytes of an `eventsource` response: an empty line, for old Opera.
pub(crate) const EVENTSOURCE_PRELUDE: &str = "\r\n";

/// The `htmlfile` page prelude for `callback`, padded past 1 KiB so browsers render it
/// incrementally. `callback` must have passed [`is_valid_callback`].
pub(crate) fn htmlfile_prelude(callback: &str) -> String {
    let head = format!(
        "<!doctype html>\n<html><head>\n  <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  \
         <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n</head><body><h2>Don't panic!</h2>\n  \
         <script>\n    document.domain = document.domain;\n    var c = parent.{callback};\n    c.start();\n    \
         function p(d) {{c.message(d);}};\n    window.onload = function() {{c.stop();}};\n  </script>"
    );
    let pad = 1024usize.saturating_sub(head.len()) + 14;
    format!("{head}{}\r\n\r\n", " ".repeat(pad))
}

/// A JSONP/htmlfile callback name: letters, digits, `_` and `.` only, so it cannot inject
/// script into the page it is written into.
pub(crate) fn is_valid_callback(callback: &str) -> bool {
    !callback.is_empty()
        && callback.len() <= 256
        && callback.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_arrays_escape_what_sockjs_requires() {
        assert_eq!(messages(&["CONNECTED\nversion:1.2\n\n\0"]), r#"a["CONNECTED\nversion:1.2\n\n\u0000"]"#);
        assert_eq!(messages::<&str>(&[]), "a[]");
        assert_eq!(messages(&["a", "b\"c\\d"]), r#"a["a","b\"c\\d"]"#);
        assert_eq!(messages(&["\u{2028}\u{200c}\u{2060}\u{fff0}\u{ffff}"]), r#"a["\u2028\u200c\u2060\ufff0\uffff"]"#);
        // Ordinary non-ASCII text is left alone.
        assert_eq!(messages(&["ünïcode 😀"]), "a[\"ünïcode 😀\"]");
        for s in ["x\u{1}y", "tab\there", "\u{7f}", "é\u{2029}"] {
            let frame = messages(&[s]);
            let decoded: Vec<String> = serde_json::from_str(&frame[1..]).unwrap();
            assert_eq!(decoded, vec![s.to_owned()], "{frame}");
        }
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        assert_eq!(close(3000, "Go away!"), r#"c[3000,"Go away!"]"#);
        assert_eq!(close(2010, "Another connection still open"), r#"c[2010,"Another connection still open"]"#);
        assert_eq!(close(1001, "a \"b\""), r#"c[1001,"a \"b\""]"#);
    }

    #[test]
    fn client_payloads_are_arrays_of_strings() {
        assert_eq!(decode_messages(br#"["a","b"]"#), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(decode_messages(br#" ["x\u0000"] "#), Ok(vec!["x\0".into()]));
        assert_eq!(decode_messages(br#""solo""#), Ok(vec!["solo".into()]));
        assert_eq!(decode_messages(b"[]"), Ok(vec![]));
        assert_eq!(decode_messages(b""), Err(PayloadError::Empty));
        assert_eq!(decode_messages(b"  "), Err(PayloadError::Empty));
        for bad in [&b"[\"a\""[..], b"[1]", b"{}", b"x", b"\xff", b"[\"a\",null]"] {
            assert_eq!(decode_messages(bad), Err(PayloadError::BrokenJson), "{bad:?}");
        }
        assert_eq!(PayloadError::Empty.to_string(), "Payload expected.");
        assert_eq!(PayloadError::BrokenJson.to_string(), "Broken JSON encoding.");
    }

    #[test]
    fn transports_wrap_frames_their_way() {
        assert_eq!(Wrap::Newline.frame("o"), "o\n");
        assert_eq!(Wrap::EventSource.frame("a[\"x\"]"), "data: a[\"x\"]\r\n\r\n");
        assert_eq!(Wrap::HtmlFile.frame("o"), "<script>\np(\"o\");\n</script>\r\n");
        let evil = Wrap::HtmlFile.frame(&messages(&["</script><b>"]));
        assert!(!evil.contains("</script><b>"), "{evil}");
        assert!(evil.contains("\\u003c/script\\u003e"), "{evil}");
    }

    #[test]
    fn preludes_are_long_enough_for_browsers_to_stream() {
        let x = xhr_streaming_prelude();
        assert_eq!(x.len(), 2049);
        assert!(x.ends_with("h\n"));
        let h = htmlfile_prelude("cb");
        assert!(h.len() > 1024, "{}", h.len());
        assert!(h.contains("var c = parent.cb;"));
        assert!(h.ends_with("\r\n\r\n"));
    }

    #[test]
    fn callbacks_cannot_inject_script() {
        assert!(is_valid_callback("_jp.a1b2c3"));
        assert!(is_valid_callback("callback"));
        for bad in ["", "a b", "x;alert(1)", "a(", "</script>", "é"] {
            assert!(!is_valid_callback(bad), "{bad}");
        }
        assert!(!is_valid_callback(&"a".repeat(257)));
    }
}
