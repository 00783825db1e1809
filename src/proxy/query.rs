//! Query strings: hiding credentials from logs and taking a token out before forwarding.
//! Pure; everything not named is kept byte for byte as the client sent it.

use std::borrow::Cow;

/// The decoded name of one `name=value` pair of a query string.
fn decoded_name(pair: &str) -> String {
    let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
    form_urlencoded::parse(raw.as_bytes()).map(|(k, _)| k.into_owned()).collect()
}

/// Replace the values of the named query parameters with `REDACTED`. Names are compared after
/// percent-decoding and whatever their case, so neither `acc%65ss_token` nor `Access_Token`
/// slips a token past the filter.
pub(crate) fn redact<'a>(path_and_query: &'a str, names: &[String]) -> Cow<'a, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    if names.is_empty() || query.is_empty() {
        return Cow::Borrowed(path_and_query);
    }
    let mut changed = false;
    let parts: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((raw_name, _)) if names.iter().any(|n| n.eq_ignore_ascii_case(&decoded_name(pair))) => {
                changed = true;
                Cow::Owned(format!("{raw_name}=REDACTED"))
            }
            _ => Cow::Borrowed(pair),
        })
        .collect();
    if !changed {
        return Cow::Borrowed(path_and_query);
    }
    Cow::Owned(format!("{path}?{}", parts.join("&")))
}

/// `path_and_query` without any parameter named `name` (decoded, whatever its case); `None`
/// when there is none.
pub(crate) fn without(path_and_query: &str, name: &str) -> Option<String> {
    let (path, query) = path_and_query.split_once('?')?;
    let kept: Vec<&str> =
        query.split('&').filter(|pair| pair.is_empty() || !decoded_name(pair).eq_ignore_ascii_case(name)).collect();
    if kept.len() == query.split('&').count() {
        return None;
    }
    let query = kept.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join("&");
    Some(if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["access_token".into(), "token".into()]
    }

    #[test]
    fn named_parameters_are_redacted_whatever_their_case_and_others_kept_verbatim() {
        assert_eq!(redact("/ws?room=a%20b&access_token=s3cr3t&x", &names()), "/ws?room=a%20b&access_token=REDACTED&x");
        assert_eq!(redact("/ws?token=1&TOKEN=2", &names()), "/ws?token=REDACTED&TOKEN=REDACTED");
        assert_eq!(redact("/ws?Access_Token=abc", &names()), "/ws?Access_Token=REDACTED");
    }

    #[test]
    fn encoded_parameter_names_are_caught() {
        assert_eq!(redact("/?acc%65ss_token=abc", &names()), "/?acc%65ss_token=REDACTED");
    }

    #[test]
    fn paths_without_sensitive_parameters_are_untouched() {
        assert!(matches!(redact("/a?tokenized=1", &names()), Cow::Borrowed(_)));
        assert!(matches!(redact("/a", &names()), Cow::Borrowed(_)));
        assert!(matches!(redact("/a?", &names()), Cow::Borrowed(_)));
    }

    #[test]
    fn a_token_parameter_is_taken_out_and_the_rest_kept() {
        assert_eq!(without("/ws?room=1&access_token=abc&x=2", "access_token").as_deref(), Some("/ws?room=1&x=2"));
        assert_eq!(without("/ws?Access_Token=a&ACCESS_TOKEN=b", "access_token").as_deref(), Some("/ws"));
        assert_eq!(without("/ws?acc%65ss_token=a&b=%20", "access_token").as_deref(), Some("/ws?b=%20"));
        assert_eq!(without("/ws?room=1", "access_token"), None);
        assert_eq!(without("/ws", "access_token"), None);
    }
}
