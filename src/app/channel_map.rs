//! `--channel-map`: foreign Redis channels delivered to STOMP destinations, so publishers that
//! already write JSON to `auction:{id}` feed `/sub/auction/{id}` unchanged.
//!
//! A rule `auction:*=/sub/auction/*` maps a channel whose `:`-separated segments match the
//! left side to the destination on the right, each `*` standing for one non-empty segment,
//! bound in order. Pure: parsing, matching both ways, and the Redis glob to PSUBSCRIBE; the
//! instance decides when to listen (only while a mapped destination has a local subscriber).

/// One `CHANNEL=DESTINATION` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    channel: Vec<Part>,
    destination: Vec<Part>,
    /// The PSUBSCRIBE pattern covering every matching channel.
    glob: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Star,
}

/// Why a `--channel-map` value is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RuleError {
    #[error("expected CHANNEL=DESTINATION, e.g. 'auction:*=/sub/auction/*'")]
    Shape,
    #[error("the destination must start with '/'")]
    Destination,
    #[error("both sides need the same number of '*' (channel {channel}, destination {destination})")]
    Stars { channel: usize, destination: usize },
    #[error("'*' must be a whole segment")]
    PartialStar,
    #[error("empty segment")]
    EmptySegment,
}

impl Rule {
    pub(crate) fn parse(text: &str) -> Result<Rule, RuleError> {
        let (channel, destination) = text.split_once('=').ok_or(RuleError::Shape)?;
        let (channel, destination) = (channel.trim(), destination.trim());
        if channel.is_empty() || destination.is_empty() {
            return Err(RuleError::Shape);
        }
        let dest_body = destination.strip_prefix('/').ok_or(RuleError::Destination)?;
        let channel = parts(channel.split(':'))?;
        let destination = parts(dest_body.split('/'))?;
        let stars = |p: &[Part]| p.iter().filter(|p| **p == Part::Star).count();
        if stars(&channel) != stars(&destination) {
            return Err(RuleError::Stars { channel: stars(&channel), destination: stars(&destination) });
        }
        let glob = channel
            .iter()
            .map(|p| match p {
                Part::Star => "*".to_owned(),
                Part::Literal(l) => escape_glob(l),
            })
            .collect::<Vec<_>>()
            .join(":");
        Ok(Rule { channel, destination, glob })
    }

    /// The Redis pattern this rule listens on.
    pub(crate) fn glob(&self) -> &str {
        &self.glob
    }

    /// The destination for `channel`, or None when it does not match segment for segment
    /// (the glob's `*` also matches across `:`, so a PSUBSCRIBE delivers more than the rule).
    pub(crate) fn destination_for(&self, channel: &str) -> Option<String> {
        let bound = bind(&self.channel, channel.split(':'))?;
        Some(format!("/{}", fill(&self.destination, &bound).join("/")))
    }

    /// Whether hub key `destination` is one this rule delivers to.
    pub(crate) fn covers(&self, destination: &str) -> bool {
        destination.strip_prefix('/').is_some_and(|d| bind(&self.destination, d.split('/')).is_some())
    }
}

fn parts<'a>(segments: impl Iterator<Item = &'a str>) -> Result<Vec<Part>, RuleError> {
    segments
        .map(|s| match s {
            "" => Err(RuleError::EmptySegment),
            "*" => Ok(Part::Star),
            s if s.contains('*') => Err(RuleError::PartialStar),
            s => Ok(Part::Literal(s.to_owned())),
        })
        .collect()
}

/// The segments the stars stand for, in order, if `segments` match `pattern` exactly.
fn bind<'a>(pattern: &[Part], segments: impl Iterator<Item = &'a str>) -> Option<Vec<&'a str>> {
    let segments: Vec<&str> = segments.collect();
    if segments.len() != pattern.len() {
        return None;
    }
    let mut bound = Vec::new();
    for (p, s) in pattern.iter().zip(segments) {
        match p {
            Part::Star if !s.is_empty() => bound.push(s),
            Part::Literal(l) if l == s => {}
            _ => return None,
        }
    }
    Some(bound)
}

fn fill<'a>(pattern: &'a [Part], bound: &[&'a str]) -> Vec<&'a str> {
    let mut stars = bound.iter();
    pattern
        .iter()
        .map(|p| match p {
            Part::Literal(l) => l.as_str(),
            Part::Star => stars.next().copied().unwrap_or_default(),
        })
        .collect()
}

/// Escapes Redis glob metacharacters in a literal segment.
fn escape_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every rule of an instance.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChannelMap {
    rules: Vec<Rule>,
}

impl ChannelMap {
    pub(crate) fn new(rules: Vec<Rule>) -> ChannelMap {
        ChannelMap { rules }
    }

    /// Indexes of the rules delivering to hub key `destination`.
    pub(crate) fn rules_covering<'a>(&'a self, destination: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.rules.iter().enumerate().filter(move |(_, r)| r.covers(destination)).map(|(i, _)| i)
    }

    pub(crate) fn rule(&self, index: usize) -> &Rule {
        &self.rules[index]
    }

    /// The destinations a message on `channel`, received through `pattern`, goes to (several
    /// rules may share a pattern).
    pub(crate) fn destinations(&self, pattern: &str, channel: &str) -> Vec<String> {
        self.rules.iter().filter(|r| r.glob == pattern).filter_map(|r| r.destination_for(channel)).collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_are_bound_positionally() {
        let r = Rule::parse("auction:*=/sub/auction/*").unwrap();
        assert_eq!(r.glob(), "auction:*");
        assert_eq!(r.destination_for("auction:42").as_deref(), Some("/sub/auction/42"));
        assert_eq!(r.destination_for("auction:"), None);
        assert_eq!(r.destination_for("auction:4:2"), None, "one star is one segment");
        assert_eq!(r.destination_for("bids:42"), None);
        assert!(r.covers("/sub/auction/42"));
        assert!(!r.covers("/sub/auction/42/x"));
        assert!(!r.covers("/sub/auction"));

        let r = Rule::parse("category:*:new-auctions=/sub/category/*/new-auctions").unwrap();
        assert_eq!(r.destination_for("category:7:new-auctions").as_deref(), Some("/sub/category/7/new-auctions"));
        assert_eq!(r.destination_for("category:7:old"), None);

        let r = Rule::parse("main:new-auctions=/sub/main/new-auctions").unwrap();
        assert_eq!(r.glob(), "main:new-auctions");
        assert_eq!(r.destination_for("main:new-auctions").as_deref(), Some("/sub/main/new-auctions"));

        let r = Rule::parse("notification:*=/user/*/queue/notifications").unwrap();
        assert_eq!(r.destination_for("notification:alice").as_deref(), Some("/user/alice/queue/notifications"));
        assert!(r.covers("/user/alice/queue/notifications"));

        // Stars may be reordered only by position: the n-th star of the channel fills the n-th
        // star of the destination.
        let r = Rule::parse("a:*:b:*=/x/*/y/*").unwrap();
        assert_eq!(r.destination_for("a:1:b:2").as_deref(), Some("/x/1/y/2"));
    }

    #[test]
    fn glob_metacharacters_in_literals_are_escaped() {
        let r = Rule::parse("we?rd[1]:*=/t/*").unwrap();
        assert_eq!(r.glob(), "we\\?rd\\[1\\]:*");
        assert_eq!(r.destination_for("we?rd[1]:x").as_deref(), Some("/t/x"));
        assert_eq!(r.destination_for("weird[1]:x"), None);
    }

    #[test]
    fn bad_rules_are_refused() {
        assert_eq!(Rule::parse("auction:*"), Err(RuleError::Shape));
        assert_eq!(Rule::parse("=/a"), Err(RuleError::Shape));
        assert_eq!(Rule::parse("a:*=sub/*"), Err(RuleError::Destination));
        assert_eq!(Rule::parse("a:*=/sub/x"), Err(RuleError::Stars { channel: 1, destination: 0 }));
        assert_eq!(Rule::parse("a:x*=/sub/*"), Err(RuleError::PartialStar));
        assert_eq!(Rule::parse("a::*=/sub/*"), Err(RuleError::EmptySegment));
        assert_eq!(Rule::parse("a:*=/sub//*"), Err(RuleError::EmptySegment));
    }

    #[test]
    fn rules_are_found_by_destination_and_by_pattern() {
        let map = ChannelMap::new(vec![
            Rule::parse("auction:*=/sub/auction/*").unwrap(),
            Rule::parse("bid:*=/sub/auction/*").unwrap(),
            Rule::parse("auction:*=/sub/all/*").unwrap(),
        ]);
        assert_eq!(map.rules_covering("/sub/auction/9").collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(map.rules_covering("/topic/x").count(), 0);
        assert_eq!(map.destinations("auction:*", "auction:9"), vec!["/sub/auction/9", "/sub/all/9"]);
        assert!(map.destinations("auction:*", "auction:9:1").is_empty());
        assert_eq!(map.len(), 3);
    }
}
