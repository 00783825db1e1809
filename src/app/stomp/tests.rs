use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

fn decode_all(bytes: &[u8], limits: Limits) -> (Vec<Item>, Option<DecodeError>) {
    let mut d = Decoder::new(limits);
    d.push(bytes);
    drain(&mut d)
}

fn drain(d: &mut Decoder) -> (Vec<Item>, Option<DecodeError>) {
    let mut items = Vec::new();
    loop {
        match d.next_item() {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None),
            Err(e) => return (items, Some(e)),
        }
    }
}

fn frames(bytes: &[u8]) -> Vec<Frame> {
    let (items, err) = decode_all(bytes, Limits::default());
    assert_eq!(err, None);
    items
        .into_iter()
        .filter_map(|i| match i {
            Item::Frame(f) => Some(f),
            Item::HeartBeat => None,
        })
        .collect()
}

#[test]
fn decodes_a_send_frame_without_content_length() {
    let f = frames(b"SEND\ndestination:/topic/a\n\nhello\0");
    assert_eq!(f, vec![Frame::new(Command::Send).header("destination", "/topic/a").with_raw_body("hello")]);
}

impl Frame {
    fn with_raw_body(mut self, body: &'static str) -> Frame {
        self.body = Bytes::from_static(body.as_bytes());
        self
    }
}

#[test]
fn content_length_body_may_contain_nul() {
    let f = frames(b"SEND\ndestination:/q\ncontent-length:5\n\na\0b\0c\0");
    assert_eq!(f.len(), 1);
    assert_eq!(&f[0].body[..], b"a\0b\0c");
}

#[test]
fn crlf_line_endings_and_heartbeats_between_frames() {
    let (items, err) = decode_all(b"\n\r\nSEND\r\ndestination:/q\r\n\r\nx\0\n\nACK\nid:1\n\n\0", Limits::default());
    assert_eq!(err, None);
    assert_eq!(
        items,
        vec![
            Item::HeartBeat,
            Item::HeartBeat,
            Item::Frame(Frame::new(Command::Send).header("destination", "/q").with_raw_body("x")),
            Item::HeartBeat,
            Item::HeartBeat,
            Item::Frame(Frame::new(Command::Ack).header("id", "1")),
        ]
    );
}

#[test]
fn headers_are_unescaped_except_in_connect() {
    let f = frames(b"SEND\na\\cb:x\\ny\\\\z\\r\n\n\0CONNECT\nlogin:a\\cb:c\n\n\0");
    assert_eq!(f[0].headers, vec![("a:b".into(), "x\ny\\z\r".into())]);
    assert_eq!(f[1].headers, vec![("login".into(), "a\\cb:c".into())]);
}

#[test]
fn stomp_1_0_does_not_unescape() {
    let mut d = Decoder::new(Limits::default());
    d.set_version(Version::V1_0);
    d.push(b"SEND\nx:a\\cb\n\n\0");
    let Ok(Some(Item::Frame(f))) = d.next_item() else {
        panic!("expected a frame");
    };
    assert_eq!(f.get("x"), Some("a\\cb"));
}

#[test]
fn undefined_escape_is_fatal() {
    let (_, err) = decode_all(b"SEND\nx:a\\tb\n\n\0", Limits::default());
    assert_eq!(err, Some(DecodeError::InvalidEscape));
}

#[test]
fn first_of_repeated_headers_wins() {
    let f = frames(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0");
    assert_eq!(f[0].get("foo"), Some("World"));
}

#[test]
fn malformed_inputs_are_errors() {
    let cases: [(&[u8], DecodeError); 5] = [
        (b"FOO\n\n\0", DecodeError::UnknownCommand("FOO".into())),
        (b"SEND\nnocolon\n\n\0", DecodeError::MalformedHeader),
        (b"SEND\ncontent-length:x\n\n\0", DecodeError::InvalidContentLength("x".into())),
        (b"SEND\ncontent-length:1\n\nab\0", DecodeError::MissingNul),
        (b"SEND\nh:\xff\n\n\0", DecodeError::InvalidUtf8),
    ];
    for (input, want) in cases {
        assert_eq!(decode_all(input, Limits::default()).1, Some(want), "{input:?}");
    }
}

#[test]
fn oversized_frames_are_refused_before_they_complete() {
    let limits = Limits { max_frame_bytes: 100, max_headers: 4 };
    let mut d = Decoder::new(limits);
    d.push(b"SEND\ndestination:/q\n\n");
    d.push(&[b'a'; 100]);
    assert_eq!(d.next_item(), Err(DecodeError::FrameTooLarge { limit: 100 }));
    // A declared content-length beyond the limit is refused without waiting for the body.
    let (_, err) = decode_all(b"SEND\ncontent-length:1000\n\n", limits);
    assert_eq!(err, Some(DecodeError::FrameTooLarge { limit: 100 }));
    let (_, err) = decode_all(b"SEND\na:1\nb:1\nc:1\nd:1\ne:1\n\n\0", limits);
    assert_eq!(err, Some(DecodeError::TooManyHeaders { limit: 4 }));
    // Exactly at the limit is fine: 99 bytes of frame + NUL.
    let mut exact = b"SEND\n\n".to_vec();
    exact.extend(std::iter::repeat_n(b'a', 100 - exact.len() - 1));
    exact.push(0);
    assert_eq!(decode_all(&exact, limits).1, None);
}

#[test]
fn errors_are_sticky() {
    let mut d = Decoder::new(Limits::default());
    d.push(b"BOGUS\n\n\0SEND\n\n\0");
    assert!(d.next_item().is_err());
    assert!(d.next_item().is_err());
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let mut d = Decoder::new(Limits::default());
    d.push(b"SEND\ndestination:/a\ncontent-le");
    assert_eq!(d.next_item(), Ok(None));
    d.push(b"ngth:2\n\nab");
    assert_eq!(d.next_item(), Ok(None));
    d.push(b"\0\r");
    assert!(matches!(d.next_item(), Ok(Some(Item::Frame(_)))));
    assert_eq!(d.next_item(), Ok(None));
    d.push(b"\n");
    assert_eq!(d.next_item(), Ok(Some(Item::HeartBeat)));
}

#[test]
fn a_frame_trickled_byte_by_byte_decodes_without_rescanning() {
    // Both body forms: NUL-terminated and content-length. Re-parsing from the frame start on
    // every byte would be ~2e9 steps here; the wait hint keeps it linear.
    for with_length in [false, true] {
        let body = vec![b'z'; 60 * 1024];
        let mut frame = Frame::new(Command::Send).header("destination", "/q");
        frame = if with_length { frame.body(body.clone()) } else { Frame { body: body.clone().into(), ..frame } };
        let bytes = to_bytes(&frame, Version::V1_2);
        let started = std::time::Instant::now();
        let mut d = Decoder::new(Limits::default());
        let mut got = None;
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            if let Some(item) = d.next_item().unwrap() {
                got = Some(item);
            }
        }
        assert_eq!(got, Some(Item::Frame(frame)));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    }
}

#[test]
fn encoding_escapes_per_version() {
    let f = Frame::new(Command::Message).header("k:", "a\nb\r\\");
    assert_eq!(to_bytes(&f, Version::V1_2), b"MESSAGE\nk\\c:a\\nb\\r\\\\\n\n\0");
    assert_eq!(to_bytes(&f, Version::V1_1), b"MESSAGE\nk\\c:a\\nb \\\\\n\n\0");
    assert_eq!(to_bytes(&f, Version::V1_0), b"MESSAGE\nk::a b \\\n\n\0");
    let c = Frame::new(Command::Connected).header("server", "a:b");
    assert_eq!(to_bytes(&c, Version::V1_2), b"CONNECTED\nserver:a:b\n\n\0");
}

#[test]
fn version_negotiation_picks_the_highest_common() {
    assert_eq!(Version::negotiate(Some("1.0,1.1,1.2")), Some(Version::V1_2));
    assert_eq!(Version::negotiate(Some("1.1, 1.0")), Some(Version::V1_1));
    assert_eq!(Version::negotiate(None), Some(Version::V1_0));
    assert_eq!(Version::negotiate(Some("2.0")), None);
}

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x7e7e_57a3),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn arb_escaped_command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.into_iter().filter(|c| c.escapes_headers()).collect::<Vec<_>>())
}

// Header text drawn from an alphabet heavy in the characters escaping exists for.
fn arb_header_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![Just(':'), Just('\n'), Just('\r'), Just('\\'), Just('c'), Just('n'), Just('é'), any::<char>(),],
        0..12,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        arb_escaped_command(),
        prop::collection::vec((arb_header_text(), arb_header_text()), 0..6),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(command, headers, body)| {
            let mut f = Frame::new(command);
            // A user header named content-length would shadow the real one (first wins).
            f.headers = headers.into_iter().filter(|(n, _)| n != "content-length").collect();
            f.body(body)
        })
}

proptest! {
    #![proptest_config(proptest_config(512))]

    #[test]
    fn encode_then_decode_round_trips(frame in arb_frame()) {
        let bytes = to_bytes(&frame, Version::V1_2);
        let (items, err) = decode_all(&bytes, Limits { max_frame_bytes: 1 << 20, max_headers: 64 });
        prop_assert_eq!(err, None);
        prop_assert_eq!(items, vec![Item::Frame(frame)]);
    }

    #[test]
    fn connect_frames_round_trip_without_escaping(
        values in prop::collection::vec("[^\r\n]{0,16}", 0..5),
    ) {
        let mut frame = Frame::new(Command::Connect);
        for (i, v) in values.into_iter().enumerate() {
            frame = frame.header(format!("h{i}"), v);
        }
        let bytes = to_bytes(&frame, Version::V1_2);
        prop_assert_eq!(frames(&bytes), vec![frame]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16),
        max_frame_bytes in 1usize..256,
    ) {
        let mut d = Decoder::new(Limits { max_frame_bytes, max_headers: 4 });
        for chunk in &chunks {
            d.push(chunk);
            let (items, _) = drain(&mut d);
            for item in items {
                if let Item::Frame(f) = item {
                    prop_assert!(f.body.len() < max_frame_bytes);
                }
            }
        }
    }

    #[test]
    fn any_split_points_yield_the_same_items(
        frames in prop::collection::vec(arb_frame(), 1..4),
        heartbeats in prop::collection::vec(0usize..3, 4),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        max_frame_bytes in prop_oneof![Just(1usize << 20), 16usize..400],
    ) {
        let mut bytes = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            bytes.extend(std::iter::repeat_n(b'\n', heartbeats[i]));
            encode(f, Version::V1_2, &mut bytes);
        }
        let limits = Limits { max_frame_bytes, max_headers: 64 };
        let whole = decode_all(&bytes, limits);

        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut d = Decoder::new(limits);
        let mut items = Vec::new();
        let mut err = None;
        let mut start = 0;
        for end in points.into_iter().chain([bytes.len()]) {
            d.push(&bytes[start..end]);
            start = end;
            let (got, e) = drain(&mut d);
            items.extend(got);
            if e.is_some() {
                err = e;
                break;
            }
        }
        prop_assert_eq!((items, err), whole);
    }
}
