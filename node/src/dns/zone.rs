//! Answering DNS queries for names under the pkarr zone, from signed packets,
//! without I/O ([`super::server`] does the sockets and the lookups).
//!
//! A name is `<labels>.<z-base-32 key>.<origin>` (the origin may be the root: then the
//! key is the top-level label, as pkarr names are). The answer holds the records of
//! the key's newest signed packet whose name and type match the question, renamed to
//! the question's name, with TTLs no longer than the packet gives them (less the time
//! since the packet was fetched). Queries for other zones are refused, never recursed.

use std::{collections::HashMap, sync::Mutex};

use hickory_proto::{
    op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use pkarr::{PublicKey, SignedPacket};

/// Largest query accepted (a question with EDNS is well under 300 bytes).
pub const MAX_QUERY: usize = 4096;
/// Largest UDP answer offered with EDNS (the DNS flag day 2020 size).
pub const MAX_UDP: u16 = 1232;
/// Largest UDP answer without EDNS (RFC 1035).
const CLASSIC_UDP: usize = 512;

/// Keys remembered by their label (a key's curve point is decompressed when it is
/// read, which would otherwise be most of the work of an answer); past this many the
/// memo starts over.
const KEYS_REMEMBERED: usize = 4096;

/// The zone a node answers for.
#[derive(Debug)]
pub struct Zone {
    origin: Name,
    keys: Mutex<HashMap<Vec<u8>, PublicKey>>,
}

impl Zone {
    /// The zone under `origin` (`""` or `"."`: keys are top-level labels).
    pub fn new(origin: &str) -> Result<Self, String> {
        let trimmed = origin.trim().trim_end_matches('.');
        let origin = if trimmed.is_empty() {
            Name::root()
        } else {
            let mut name = Name::from_ascii(trimmed)
                .map_err(|e| format!("dns.server.origin {origin:?} is no domain name: {e}"))?;
            name.set_fqdn(true);
            name.to_lowercase()
        };
        Ok(Self {
            origin,
            keys: Mutex::default(),
        })
    }

    /// The key a name label spells in z-base-32, if it is one.
    fn key_of(&self, label: &[u8]) -> Option<PublicKey> {
        let mut keys = crate::lock(&self.keys);
        if let Some(key) = keys.get(label) {
            return Some(key.clone());
        }
        let key = PublicKey::try_from(std::str::from_utf8(label).ok()?).ok()?;
        if keys.len() >= KEYS_REMEMBERED {
            keys.clear();
        }
        keys.insert(label.to_vec(), key.clone());
        Some(key)
    }

    /// The name of `key`'s records under this zone (`<z32>.<origin>.`).
    pub fn name_of(&self, key: &PublicKey) -> String {
        if self.origin.is_root() {
            format!("{}.", key.to_z32())
        } else {
            format!("{}.{}", key.to_z32(), self.origin)
        }
    }
}

/// A query for a name under the zone.
#[derive(Debug)]
pub struct Question {
    request: Message,
    query: Query,
    /// The key whose packet answers it.
    pub key: PublicKey,
    /// The name relative to the origin, lower case (`_git.<z32>`), as pkarr packets
    /// name their records.
    relative: Name,
}

/// What a query comes to before any packet is looked up.
#[derive(Debug)]
pub enum Parsed {
    /// A question for a key's records: look its packet up, then [`answer`].
    Ask(Box<Question>),
    /// An answer already (an error: malformed, not a query, another zone).
    Answer(Vec<u8>),
    /// Not even a header to answer: drop it.
    Drop,
}

/// Reads the query `bytes` for `zone`.
pub fn parse(zone: &Zone, bytes: &[u8]) -> Parsed {
    if bytes.len() < 12 {
        return Parsed::Drop;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    // A response (QR set) is never answered: that is how reflection loops start.
    if bytes[2] & 0x80 != 0 {
        return Parsed::Drop;
    }
    if bytes.len() > MAX_QUERY {
        return Parsed::Answer(formerr(id));
    }
    let Ok(request) = Message::from_vec(bytes) else {
        return Parsed::Answer(formerr(id));
    };
    if request.metadata.message_type != MessageType::Query {
        return Parsed::Drop;
    }
    if request.metadata.op_code != OpCode::Query {
        return Parsed::Answer(reply(&request, ResponseCode::NotImp));
    }
    let [query] = request.queries.as_slice() else {
        return Parsed::Answer(reply(&request, ResponseCode::FormErr));
    };
    let query = query.clone();
    let name = query.name().to_lowercase();
    let origin_labels = usize::from(zone.origin.num_labels());
    let labels = usize::from(name.num_labels());
    if !zone.origin.zone_of(&name) || labels <= origin_labels {
        return Parsed::Answer(reply(&request, ResponseCode::Refused));
    }
    let relative = labels - origin_labels;
    let key = name
        .iter()
        .nth(relative - 1)
        .and_then(|label| zone.key_of(label));
    let Some(key) = key else {
        // Under a named origin the name is ours and does not exist; under the root it
        // is another top-level domain.
        let code = if zone.origin.is_root() {
            ResponseCode::Refused
        } else {
            ResponseCode::NXDomain
        };
        return Parsed::Answer(reply(&request, code));
    };
    let Ok(relative) = Name::from_labels(name.iter().take(relative)) else {
        return Parsed::Answer(reply(&request, ResponseCode::FormErr));
    };
    Parsed::Ask(Box::new(Question {
        request,
        query,
        key,
        relative,
    }))
}

/// The answer to `q` from `packet` (the key's newest valid packet; `None`: none
/// found), fetched `elapsed` seconds ago, fitting in `limit` bytes (UDP: the
/// query's EDNS size, else 512; TCP and DNS-over-HTTPS: 65535) or truncated.
pub fn answer(q: &Question, packet: Option<&SignedPacket>, elapsed: u32, limit: usize) -> Vec<u8> {
    let Some(packet) = packet else {
        return reply(&q.request, ResponseCode::NXDomain);
    };
    let Ok(records) = Message::from_vec(&packet.encoded_packet()) else {
        return reply(&q.request, ResponseCode::ServFail);
    };
    let at_name: Vec<_> = records
        .answers
        .into_iter()
        .filter(|rr| rr.name.to_lowercase().eq_ignore_root(&q.relative))
        .collect();
    if at_name.is_empty() {
        return reply(&q.request, ResponseCode::NXDomain);
    }
    let mut response = response(&q.request, ResponseCode::NoError);
    let wanted = q.query.query_type();
    for mut rr in at_name {
        if wanted == RecordType::ANY || rr.record_type() == wanted {
            rr.name = q.query.name().clone();
            rr.ttl = rr.ttl.saturating_sub(elapsed);
            response.add_answer(rr);
        }
    }
    encode(&response, limit)
}

/// The error answer `code` to `q` (e.g. `Refused` for a key that is not an active
/// operator's).
pub fn refuse(q: &Question, code: ResponseCode) -> Vec<u8> {
    reply(&q.request, code)
}

/// The UDP size limit for answers to `q`.
pub fn udp_limit(q: &Question) -> usize {
    q.request.edns.as_ref().map_or(CLASSIC_UDP, |e| {
        usize::from(e.max_payload().clamp(512, MAX_UDP))
    })
}

/// The smallest TTL among `answer`'s records (how long an HTTP cache may keep it).
pub fn min_ttl(answer: &[u8]) -> Option<u32> {
    let m = Message::from_vec(answer).ok()?;
    m.answers.iter().map(|rr| rr.ttl).min()
}

fn response(request: &Message, code: ResponseCode) -> Message {
    let mut m = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata = Metadata::response_from_request(&request.metadata);
    m.metadata.authoritative = code != ResponseCode::Refused;
    m.metadata.response_code = code;
    m.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP);
        m.set_edns(edns);
    }
    m
}

fn reply(request: &Message, code: ResponseCode) -> Vec<u8> {
    encode(&response(request, code), usize::from(u16::MAX))
}

/// FORMERR for query `id`, when not even its question can be read.
fn formerr(id: u16) -> Vec<u8> {
    encode(
        &Message::error_msg(id, OpCode::Query, ResponseCode::FormErr),
        CLASSIC_UDP,
    )
}

/// `m` on the wire; over `limit`, its truncated form (header, question, TC set).
fn encode(m: &Message, limit: usize) -> Vec<u8> {
    match m.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        Ok(_) => m.truncate().to_vec().unwrap_or_default(),
        Err(_) => {
            let failed = Message::error_msg(m.metadata.id, OpCode::Query, ResponseCode::ServFail);
            failed.to_vec().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use hickory_proto::rr::{DNSClass, RData};
    use pkarr::{Keypair, Timestamp};
    use proptest::prelude::*;

    use super::*;
    use crate::{
        dns::{Endpoints, packet},
        keys::NodeKey,
    };

    fn signed() -> (Keypair, SignedPacket) {
        let key = super::super::keypair(&NodeKey::from_seed(&[9; 32]));
        let endpoints = Endpoints {
            git: Some("http://127.0.0.1:8680".into()),
            grpc: None,
            p2p: vec!["/ip4/127.0.0.1/tcp/8681".into()],
            chain_id: 31337,
            operator: None,
        };
        let (p, _) = packet(&key, &endpoints, Timestamp::now()).unwrap();
        (key, p)
    }

    fn query(name: &str, kind: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn ask(zone: &Zone, bytes: &[u8]) -> Box<Question> {
        match parse(zone, bytes) {
            Parsed::Ask(q) => q,
            other => panic!("not a question: {other:?}"),
        }
    }

    fn answered(zone: &Zone, bytes: &[u8]) -> Message {
        match parse(zone, bytes) {
            Parsed::Answer(a) => Message::from_vec(&a).unwrap(),
            other => panic!("not answered: {other:?}"),
        }
    }

    fn texts(m: &Message) -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|rr| match &rr.data {
                RData::TXT(t) => Some(t.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn keys_are_remembered_by_label_and_the_memo_stays_bounded() {
        let zone = Zone::new("").unwrap();
        let key = Keypair::random().public_key();
        let label = key.to_z32().into_bytes();
        assert_eq!(zone.key_of(&label), Some(key.clone()));
        assert_eq!(zone.key_of(&label), Some(key));
        assert_eq!(zone.key_of(b"not-a-key"), None);
        assert_eq!(crate::lock(&zone.keys).len(), 1);
        for _ in 0..KEYS_REMEMBERED + 10 {
            zone.key_of(Keypair::random().public_key().to_z32().as_bytes());
        }
        assert!(crate::lock(&zone.keys).len() <= KEYS_REMEMBERED);
    }

    #[test]
    fn the_git_record_answers_under_the_key_with_the_packets_ttl() {
        let (key, p) = signed();
        for origin in ["", "pkarr.example.org"] {
            let zone = Zone::new(origin).unwrap();
            let name = format!("_git.{}", zone.name_of(&key.public_key()));
            let q = ask(&zone, &query(&name, RecordType::TXT, true));
            assert_eq!(q.key, key.public_key());
            let m = Message::from_vec(&answer(&q, Some(&p), 10, udp_limit(&q))).unwrap();
            assert_eq!(m.metadata.id, 4242);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative && m.metadata.recursion_desired);
            assert!(!m.metadata.recursion_available);
            assert_eq!(texts(&m), vec!["url=http://127.0.0.1:8680"], "{m:?}");
            let rr = &m.answers[0];
            assert_eq!(rr.name.to_ascii(), name);
            assert_eq!(rr.dns_class, DNSClass::IN);
            assert_eq!(rr.ttl, super::super::TTL - 10);
            assert!(m.edns.is_some(), "EDNS in, EDNS out");
        }
    }

    #[test]
    fn names_match_case_insensitively_and_types_filter() {
        let (key, p) = signed();
        let zone = Zone::new("").unwrap();
        let upper = format!("_GIT.{}", key.public_key().to_z32().to_uppercase());
        let q = ask(&zone, &query(&upper, RecordType::SVCB, false));
        let m = Message::from_vec(&answer(&q, Some(&p), 0, udp_limit(&q))).unwrap();
        assert_eq!(m.answers.len(), 1, "{m:?}");
        assert_eq!(m.answers[0].record_type(), RecordType::SVCB);
        // ANY: both of _git's records.
        let q = ask(&zone, &query(&upper, RecordType::ANY, false));
        let m = Message::from_vec(&answer(&q, Some(&p), 0, udp_limit(&q))).unwrap();
        assert_eq!(m.answers.len(), 2, "{m:?}");
        // A type the name lacks: no error, no records.
        let q = ask(&zone, &query(&upper, RecordType::A, false));
        let m = Message::from_vec(&answer(&q, Some(&p), 0, udp_limit(&q))).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert!(m.edns.is_none(), "no EDNS in, none out");
    }

    #[test]
    fn absent_names_and_keys_are_nxdomain() {
        let (key, p) = signed();
        let zone = Zone::new("").unwrap();
        let name = format!("_nothing.{}", key.public_key().to_z32());
        let q = ask(&zone, &query(&name, RecordType::TXT, false));
        let m = Message::from_vec(&answer(&q, Some(&p), 0, 512)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = Message::from_vec(&answer(&q, None, 0, 512)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = Message::from_vec(&refuse(&q, ResponseCode::Refused)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn other_zones_are_refused_and_bad_input_answered_or_dropped() {
        let (key, _) = signed();
        let zone = Zone::new("pkarr.example.org.").unwrap();
        let refused = answered(&zone, &query("example.com", RecordType::A, false));
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        let bare = format!("{}.", key.public_key().to_z32());
        let refused = answered(&zone, &query(&bare, RecordType::TXT, false));
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        let missing = answered(
            &zone,
            &query("nokey.pkarr.example.org", RecordType::A, false),
        );
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        let root = Zone::new("").unwrap();
        let refused = answered(&root, &query("www.example.com", RecordType::A, false));
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);

        // Too short for a header: dropped. Garbage after a header: FORMERR.
        assert!(matches!(parse(&root, &[1, 2, 3]), Parsed::Drop));
        let mut junk = query("www.example.com", RecordType::A, false);
        junk.truncate(14);
        let m = answered(&root, &junk);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 4242);
        // Oversized: FORMERR without reading it.
        let mut big = query("www.example.com", RecordType::A, false);
        big.resize(MAX_QUERY + 1, 0);
        assert_eq!(
            answered(&root, &big).metadata.response_code,
            ResponseCode::FormErr
        );
        // A response is never answered.
        let mut response = query("www.example.com", RecordType::A, false);
        response[2] |= 0x80;
        assert!(matches!(parse(&root, &response), Parsed::Drop));
        // Two questions: FORMERR.
        let mut two = Message::new(7, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("b.").unwrap(), RecordType::A));
        let m = answered(&root, &two.to_vec().unwrap());
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Not a query: NOTIMP.
        let mut notify = Message::new(8, MessageType::Query, OpCode::Notify);
        notify.add_query(Query::query(
            Name::from_ascii("a.").unwrap(),
            RecordType::SOA,
        ));
        let m = answered(&root, &notify.to_vec().unwrap());
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    }

    #[test]
    fn an_answer_over_the_udp_limit_is_truncated() {
        let (key, p) = signed();
        let zone = Zone::new("").unwrap();
        let name = format!("_git.{}", key.public_key().to_z32());
        let q = ask(&zone, &query(&name, RecordType::ANY, false));
        let m = Message::from_vec(&answer(&q, Some(&p), 0, 40)).unwrap();
        assert!(m.metadata.truncation && m.answers.is_empty(), "{m:?}");
        assert_eq!(m.metadata.id, 4242);
    }

    /// Bytes from outside get a well-formed answer within the UDP size, or none.
    fn answered_or_dropped(bytes: &[u8]) -> Result<(), TestCaseError> {
        let (_, p) = signed();
        let zone = Zone::new("").unwrap();
        match parse(&zone, bytes) {
            Parsed::Drop => {}
            Parsed::Answer(a) => prop_assert!(Message::from_vec(&a).is_ok()),
            Parsed::Ask(q) => {
                let a = answer(&q, Some(&p), 0, udp_limit(&q));
                prop_assert!(Message::from_vec(&a).is_ok() && a.len() <= udp_limit(&q));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_answered_or_dropped(
            bytes in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            answered_or_dropped(&bytes)?;
        }

        #[test]
        fn mutated_queries_are_answered_or_dropped(bytes in crate::fuzz::mutated(query(
            &format!("_git.{}", signed().0.public_key().to_z32()),
            RecordType::TXT,
            true,
        ))) {
            answered_or_dropped(&bytes)?;
        }
    }
}
