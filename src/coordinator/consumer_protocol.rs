//! The embedded "consumer" protocol of classic groups: the subscription a
//! member sends in JoinGroup metadata (ConsumerProtocolSubscription). The
//! broker only peeks at the topic list (OffsetDelete must refuse to delete
//! offsets of a topic the group still consumes); assignments stay opaque bytes.

/// Most topics read from one subscription (bounds work on a hostile one).
const SUBSCRIPTION_TOPICS_MAX: usize = 100_000;

/// The topics of a ConsumerProtocolSubscription (any version: they all start
/// with `version: int16, topics: [string]`); `None` if it does not parse.
pub fn subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let slice = metadata.get(at..at.checked_add(n)?)?;
        at += n;
        Some(slice)
    };
    let version = i16::from_be_bytes(take(2)?.try_into().ok()?);
    if version < 0 {
        return None;
    }
    let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
    if count < 0 || count as usize > SUBSCRIPTION_TOPICS_MAX {
        return None;
    }
    let mut topics = Vec::with_capacity((count as usize).min(metadata.len()));
    for _ in 0..count {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        if len < 0 {
            return None;
        }
        let name = std::str::from_utf8(take(len as usize)?).ok()?;
        topics.push(name.to_string());
    }
    Some(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(topics: &[&str]) -> Vec<u8> {
        let mut out = vec![0, 1];
        out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for t in topics {
            out.extend_from_slice(&(t.len() as i16).to_be_bytes());
            out.extend_from_slice(t.as_bytes());
        }
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out
    }

    #[test]
    fn reads_the_topics_of_a_subscription() {
        assert_eq!(
            subscription_topics(&subscription(&["a", "orders"])),
            Some(vec!["a".into(), "orders".into()])
        );
    }

    #[test]
    fn truncated_or_hostile_subscriptions_are_none() {
        assert_eq!(subscription_topics(&[0]), None);
        assert_eq!(subscription_topics(&[0, 1, 0x7f, 0xff, 0xff, 0xff]), None);
        let mut s = subscription(&["abc"]);
        s.truncate(8);
        assert_eq!(subscription_topics(&s), None);
    }
}
