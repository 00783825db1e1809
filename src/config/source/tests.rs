use super::*;

fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn doc(text: &str) -> Document {
    parse(text, &no_env).expect("valid YAML")
}

fn errors(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<SourceError> {
    parse(text, env).expect_err("invalid YAML")
}

#[test]
fn expands_set_variables_and_defaults() {
    let env = env(&[("HOST", "10.0.0.1"), ("EMPTY", "")]);
    assert_eq!(expand("${HOST}:80", &env), Ok("10.0.0.1:80".into()));
    assert_eq!(expand("${PORT:-8080}", &env), Ok("8080".into()));
    assert_eq!(expand("${HOST:-x}", &env), Ok("10.0.0.1".into()));
    assert_eq!(expand("${EMPTY:-d}", &env), Ok("d".into()));
    assert_eq!(expand("[${EMPTY}]", &env), Ok("[]".into()));
    assert_eq!(expand("${PORT:-}", &env), Ok("".into()));
    assert_eq!(expand("${HOST}-${HOST}", &env), Ok("10.0.0.1-10.0.0.1".into()));
    assert_eq!(expand("${D:-a:-b}", &env), Ok("a:-b".into()));
    assert_eq!(expand("no refs $ here {}", &env), Ok("no refs $ here {}".into()));
}

#[test]
fn double_dollar_escapes_a_literal_reference() {
    assert_eq!(expand("$${HOME}", &no_env), Ok("${HOME}".into()));
    assert_eq!(expand("a$${B}c${X:-d}", &no_env), Ok("a${B}cd".into()));
}

#[test]
fn expansion_errors_name_the_problem() {
    assert_eq!(expand("${NOPE}", &no_env), Err(ExpandError::Unset("NOPE".into())));
    assert_eq!(expand("x${A", &no_env), Err(ExpandError::Unterminated));
    assert_eq!(expand("${1A}", &no_env), Err(ExpandError::BadName("1A".into())));
    assert_eq!(expand("${}", &no_env), Err(ExpandError::BadName("".into())));
    assert_eq!(
        ExpandError::Unset("NOPE".into()).to_string(),
        "environment variable NOPE is not set (write ${NOPE:-default} to give a default)"
    );
}

#[test]
fn plain_scalars_resolve_per_yaml_1_2_core_schema() {
    let d = doc(concat!(
        "n1: ~\nn2: null\nn3:\nb1: true\nb2: False\ni1: 42\ni2: -7\ni3: 0x1F\ni4: 0o17\n",
        "f1: 1.25\nf2: -.5e3\nf3: .inf\ns1: yes\ns2: 0s\ns3: 1_000\ns4: '42'\ns5: \"true\"\n",
        "s6: 12abc\ns7: 99999999999999999999999\n",
    ));
    let v = &d.value;
    assert!(v["n1"].is_null() && v["n2"].is_null() && v["n3"].is_null());
    assert_eq!(v["b1"], Value::Bool(true));
    assert_eq!(v["b2"], Value::Bool(false));
    assert_eq!(v["i1"].as_u64(), Some(42));
    assert_eq!(v["i2"].as_i64(), Some(-7));
    assert_eq!(v["i3"].as_u64(), Some(31));
    assert_eq!(v["i4"].as_u64(), Some(15));
    assert_eq!(v["f1"].as_f64(), Some(1.25));
    assert_eq!(v["f2"].as_f64(), Some(-500.0));
    assert_eq!(v["f3"].as_f64(), Some(f64::INFINITY));
    for (key, text) in [
        ("s1", "yes"),
        ("s2", "0s"),
        ("s3", "1_000"),
        ("s4", "42"),
        ("s5", "true"),
        ("s6", "12abc"),
        ("s7", "99999999999999999999999"),
    ] {
        assert_eq!(v[key], Value::String(text.into()), "{key}");
    }
}

#[test]
fn expansion_happens_before_resolution_and_quoted_values_stay_strings() {
    let env = env(&[("W", "3"), ("ON", "true")]);
    let d = parse("a: ${W}\nb: \"${W}\"\nc: ${ON}\nd: '${W:-1}'\n", &env).expect("valid");
    assert_eq!(d.value["a"].as_u64(), Some(3));
    assert_eq!(d.value["b"], Value::String("3".into()));
    assert_eq!(d.value["c"], Value::Bool(true));
    assert_eq!(d.value["d"], Value::String("3".into()));
}

#[test]
fn keys_and_comments_are_not_expanded() {
    let d = doc("${K}: 1 # ${UNSET}\n");
    assert_eq!(d.value["${K}"].as_u64(), Some(1));
}

#[test]
fn positions_are_one_based_and_point_at_values() {
    let text = "\
listeners:
  - name: public
    bind: \"0.0.0.0:8080\"
upstreams:
  app:
    backends:
      - { id: app-1, address: '127.0.0.1:9001' }
      - id: app-2
        address: 127.0.0.1:9002
";
    let d = doc(text);
    let i = &d.index;
    assert_eq!(i.value("listeners"), Some((2, 3)));
    assert_eq!(i.value("listeners[0]"), Some((2, 5)));
    assert_eq!(i.value("listeners[0].name"), Some((2, 11)));
    assert_eq!(i.key("listeners[0].bind"), Some((3, 5)));
    assert_eq!(i.value("listeners[0].bind"), Some((3, 11)));
    assert_eq!(i.value("upstreams.app"), Some((6, 5)));
    assert_eq!(i.value("upstreams.app.backends[0]"), Some((7, 9)));
    assert_eq!(i.value("upstreams.app.backends[0].address"), Some((7, 31)));
    assert_eq!(i.value("upstreams.app.backends[1]"), Some((8, 9)));
    assert_eq!(i.value("upstreams.app.backends[1].address"), Some((9, 18)));
    // The root mapping starts at its first key.
    assert_eq!(i.value(""), Some((1, 1)));
}

#[test]
fn absent_paths_fall_back_to_their_closest_ancestor() {
    let d = doc("shutdown:\n  delay: 5s\n");
    assert_eq!(d.index.value("shutdown.timeout"), Some((2, 3)));
    assert_eq!(d.index.value("limits.max_connections"), Some((1, 1)));
    assert_eq!(d.index.key("shutdown.timeout"), Some((2, 3)));
}

#[test]
fn an_empty_value_is_located_at_its_key() {
    let d = doc("a:\n  b:\nc: 1\n");
    assert_eq!(d.index.value("a.b"), Some((2, 3)));
}

#[test]
fn unset_variables_are_located_at_their_value_and_all_reported() {
    let errs = errors("a: x\nb: \"${ONE}\"\nc:\n  - ok\n  - pre${TWO}post\n", &no_env);
    assert_eq!(
        errs,
        vec![
            SourceError {
                position: Some((2, 4)),
                path: "b".into(),
                message: ExpandError::Unset("ONE".into()).to_string(),
            },
            SourceError {
                position: Some((5, 5)),
                path: "c[1]".into(),
                message: ExpandError::Unset("TWO".into()).to_string(),
            },
        ]
    );
}

#[test]
fn duplicate_keys_are_errors_naming_both_places() {
    let errs = errors("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n", &no_env);
    assert_eq!(
        errs,
        vec![
            SourceError {
                position: Some((4, 3)),
                path: "b.c".into(),
                message: "duplicate key \"c\" (first defined at 3:3)".into(),
            },
            SourceError {
                position: Some((5, 1)),
                path: "a".into(),
                message: "duplicate key \"a\" (first defined at 1:1)".into(),
            },
        ]
    );
}

#[test]
fn a_nul_character_is_refused_not_read_as_the_end_of_the_file() {
    let errs = errors("a: 1\r\nb: 2\0\nauth: x\n", &no_env);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].position, Some((2, 5)));
    assert!(errs[0].message.contains("NUL"), "{:?}", errs[0]);
}

#[test]
fn syntax_errors_stop_at_the_first_with_a_position() {
    let errs = errors("a: [1, 2\nb: 3\n", &no_env);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.starts_with("YAML syntax error: "), "{:?}", errs[0]);
    assert!(errs[0].position.is_some());
}

#[test]
fn aliases_copy_values_and_positions() {
    let text = "\
a: &shared
  x: 1
  y: [2, 3]
b: *shared
";
    let d = doc(text);
    assert_eq!(d.value["b"], d.value["a"]);
    assert_eq!(d.index.value("b"), Some((4, 4)));
    // Fields reached through the alias point at where they are written.
    assert_eq!(d.index.value("b.x"), Some((2, 6)));
    assert_eq!(d.index.value("b.y[1]"), Some((3, 10)));
    assert_eq!(d.index.key("b.x"), Some((2, 3)));
}

#[test]
fn alias_bombs_are_refused() {
    let mut text = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..8 {
        let prev = i - 1;
        text.push_str(&format!(
            "l{i}: &l{i} [*l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, \
                 *l{prev}, *l{prev}, *l{prev}, *l{prev}]\n"
        ));
    }
    let errs = errors(&text, &no_env);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.contains("more than 100000 values"), "{errs:?}");
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let text = "[".repeat(200) + &"]".repeat(200);
    let errs = errors(&text, &no_env);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let deep = "a:\n".to_owned() + &(1..100).map(|i| format!("{}a:\n", "  ".repeat(i))).collect::<String>();
    let errs = errors(&deep, &no_env);
    assert_eq!(errs[0].message, "nested deeper than 64 levels");
}

#[test]
fn merge_keys_and_unknown_tags_are_clear_errors() {
    let errs = errors("a: &a {x: 1}\nb:\n  <<: *a\n", &no_env);
    assert_eq!(errs[0].position, Some((3, 3)));
    assert!(errs[0].message.starts_with("merge keys (<<) are not supported"));
    let errs = errors("a: !custom x\n", &no_env);
    assert_eq!(errs[0].message, "unsupported tag !custom");
    assert_eq!(errs[0].position, Some((1, 12)));
}

#[test]
fn core_tags_force_or_check_types() {
    let d = doc("a: !!str 12\nb: !!int 7\nc: !!float 1\n");
    assert_eq!(d.value["a"], Value::String("12".into()));
    assert_eq!(d.value["b"].as_u64(), Some(7));
    assert_eq!(d.value["c"].as_f64(), Some(1.0));
    let errs = errors("a: !!int x\n", &no_env);
    assert_eq!(errs[0].message, "\"x\" is not a valid !!int");
}

#[test]
fn non_string_keys_are_refused() {
    let errs = errors("? [a]\n: 1\n", &no_env);
    assert!(errs[0].message.starts_with("mapping keys must be plain text"));
}

#[test]
fn a_second_document_is_an_error() {
    let errs = errors("a: 1\n---\nb: 2\n", &no_env);
    assert_eq!(errs[0].position.map(|p| p.0), Some(2));
    assert!(errs[0].message.contains("one YAML document"));
}

#[test]
fn empty_text_is_null() {
    assert!(doc("").value.is_null());
    assert!(doc("# only a comment\n").value.is_null());
}
