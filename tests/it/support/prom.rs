//! A strict parser for the Prometheus / OpenMetrics text exposition format, so tests can both
//! prove that `/metrics` parses and read exact values out of it.
//!
//! Checked: `# HELP` / `# TYPE` / `# UNIT` lines, metric and label name syntax, quoted label
//! values with their escapes, float values (`+Inf`, `-Inf`, `NaN` included), optional
//! timestamps, that every sample belongs to the family declared just before it with a suffix
//! its type allows, no family declared twice, no duplicate series, non-negative counters,
//! histograms with cumulative buckets ending in `+Inf` equal to `_count`, and a final `# EOF`.

use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone)]
pub struct Family {
    pub kind: String,
    pub help: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub families: BTreeMap<String, Family>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one series `name{labels..}` (other labels must not split it), or
    /// `None` when no series matches. Panics when several do: the test asked an ambiguous
    /// question.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(found.len() <= 1, "{name}{labels:?} matches {} series: {found:?}", found.len());
        found.first().map(|s| s.value)
    }

    /// Like [`Scrape::get`], with an absent series read as 0 (a counter not created yet).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Sum over every series of `name` matching `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.is_empty() || s.chars().any(|c| !(c.is_ascii_digit() || "+-.eE".contains(c))) => None,
        _ => s.parse().ok(),
    }
}

/// Suffixes a sample of a family of `kind` may carry.
fn allowed_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "gauge" | "unknown" => &[""],
        "histogram" | "gaugehistogram" => &["_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        "stateset" => &[""],
        _ => &[],
    }
}

/// `{a="x",b="y"}` at the start of `s`: the labels and what follows the closing brace.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected '{'")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label value")),
                },
                Some((_, '\n')) => return Err("newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

/// Parse a whole exposition; the error names the offending line.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    let mut saw_eof = false;
    let body = text.strip_suffix('\n').ok_or("the exposition must end with a newline")?;
    for (n, line) in body.split('\n').enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if saw_eof {
            return Err(at("content after # EOF".into()));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, name, rest) = (parts.next(), parts.next(), parts.next());
            let name = name.filter(|n| is_metric_name(n)).ok_or_else(|| at("bad metric name".into()))?;
            match keyword {
                Some("TYPE") => {
                    let kind = rest.ok_or_else(|| at("TYPE without a type".into()))?;
                    if allowed_suffixes(kind).is_empty() {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if scrape.families.contains_key(name) && current.as_deref() != Some(name) {
                        return Err(at(format!("family {name} declared twice")));
                    }
                    let family =
                        scrape.families.entry(name.to_owned()).or_insert(Family { kind: String::new(), help: None });
                    if !family.kind.is_empty() {
                        return Err(at(format!("second TYPE for {name}")));
                    }
                    family.kind = kind.to_owned();
                    current = Some(name.to_owned());
                }
                Some("HELP") => {
                    if scrape.families.contains_key(name) && current.as_deref() != Some(name) {
                        return Err(at(format!("family {name} declared twice")));
                    }
                    let family =
                        scrape.families.entry(name.to_owned()).or_insert(Family { kind: String::new(), help: None });
                    if family.help.is_some() {
                        return Err(at(format!("second HELP for {name}")));
                    }
                    family.help = Some(rest.unwrap_or("").to_owned());
                    current = Some(name.to_owned());
                }
                Some("UNIT") => {
                    if current.as_deref() != Some(name) {
                        return Err(at("UNIT for another family than the current one".into()));
                    }
                }
                _ => return Err(at("unknown # line".into())),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(at("empty or malformed line".into()));
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("sample without a value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad sample name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields =
            rest.strip_prefix(' ').ok_or_else(|| at("expected a space before the value".into()))?.split(' ');
        let value = fields.next().and_then(parse_value).ok_or_else(|| at("bad value".into()))?;
        if let Some(ts) = fields.next()
            && parse_value(ts).is_none()
        {
            return Err(at("bad timestamp".into()));
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family_name = current.as_deref().ok_or_else(|| at("sample before any # TYPE".into()))?;
        let family = &scrape.families[family_name];
        let suffix =
            name.strip_prefix(family_name).ok_or_else(|| at(format!("sample outside its family {family_name}")))?;
        if !allowed_suffixes(&family.kind).contains(&suffix) {
            return Err(at(format!("suffix {suffix:?} not allowed for a {}", family.kind)));
        }
        if family.kind == "counter" && suffix == "_total" && (value < 0.0 || value.is_nan()) {
            return Err(at("negative counter".into()));
        }
        if suffix == "_bucket" && !labels.contains_key("le") {
            return Err(at("bucket without le".into()));
        }
        if !series.insert((name.to_owned(), labels.clone())) {
            return Err(at("duplicate series".into()));
        }
        scrape.samples.push(Sample { name: name.to_owned(), labels, value });
    }
    if !saw_eof {
        return Err("missing # EOF".into());
    }
    for (name, family) in &scrape.families {
        if family.kind.is_empty() {
            return Err(format!("family {name} has no # TYPE"));
        }
        if family.kind == "histogram" {
            check_histogram(&scrape, name)?;
        }
    }
    Ok(scrape)
}

/// Buckets cumulative, the last `+Inf`, and equal to `_count`, for every label set.
fn check_histogram(scrape: &Scrape, name: &str) -> Result<(), String> {
    let bucket = format!("{name}_bucket");
    let count = format!("{name}_count");
    let mut by_series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    for s in scrape.samples.iter().filter(|s| s.name == bucket) {
        let mut labels = s.labels.clone();
        let le = labels.remove("le").and_then(|v| parse_value(&v)).ok_or(format!("{bucket}: bad le"))?;
        by_series.entry(labels).or_default().push((le, s.value));
    }
    for (labels, mut buckets) in by_series {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{bucket}{labels:?}: buckets are not cumulative"));
        }
        let Some(&(le, inf)) = buckets.last() else { continue };
        if le != f64::INFINITY {
            return Err(format!("{bucket}{labels:?}: no +Inf bucket"));
        }
        let total = scrape
            .samples
            .iter()
            .find(|s| s.name == count && s.labels == labels)
            .ok_or(format!("{count}{labels:?} missing"))?;
        if total.value != inf {
            return Err(format!("{count}{labels:?} = {} but the +Inf bucket holds {inf}", total.value));
        }
    }
    Ok(())
}
