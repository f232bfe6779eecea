//! The ACL as people and scripts read it (`hanzo-node acl show`, `GET /acl`).

use serde_json::{Value, json};

use super::{Key, Snapshot, eth};

fn key(k: &Key) -> Value {
    match k {
        Key::Ssh(s) => json!({ "ssh": s.to_line(), "fingerprint": s.fingerprint() }),
        Key::Eth(a) => json!({ "eth": a.to_string() }),
    }
}

/// The snapshot as JSON: block, parameters, operators, callers, identities, repos.
pub fn json(snap: &Snapshot) -> Value {
    let s = &snap.state;
    let handle = |id: &u64| {
        s.identities
            .get(id)
            .map_or_else(|| id.to_string(), |i| i.handle.clone())
    };
    json!({
        "block": snap.block.map(|b| json!({ "number": b.number, "hash": b.hash.to_string(), "time": snap.block_time })),
        "events_applied": snap.events_applied,
        "params": {
            "min_operator_stake": eth(s.params.min_operator_stake),
            "min_caller_stake": eth(s.params.min_caller_stake),
            "unbonding_period_s": s.params.unbonding_period,
        },
        "operators": s.operators.iter().map(|(addr, op)| json!({
            "address": addr.to_string(),
            "node_key": op.node_key.to_string(),
            "endpoint": op.endpoint,
            "stake": eth(op.balance.stake),
            "unbonding": eth(op.balance.unbonding),
            "active": snap.is_operator(&op.node_key),
        })).collect::<Vec<_>>(),
        "callers": s.callers.iter().map(|(addr, b)| json!({
            "address": addr.to_string(),
            "stake": eth(b.stake),
            "unbonding": eth(b.unbonding),
            "active": snap.check_caller(addr).is_ok(),
        })).collect::<Vec<_>>(),
        "identities": s.identities.iter().map(|(id, i)| json!({
            "id": id,
            "handle": i.handle,
            "holder": i.holder.to_string(),
            "keys": i.keys.iter().map(key).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "repos": s.repos.iter().map(|(id, r)| json!({
            "id": id,
            "name": r.name,
            "holder": r.holder.to_string(),
            "owner": handle(&r.owner_identity),
            "private": r.private,
            "committers": r.committers.iter().map(handle).collect::<Vec<_>>(),
            "readers": r.readers.iter().map(handle).collect::<Vec<_>>(),
            "replicators": r.replicators.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The snapshot as a few lines of text.
pub fn text(snap: &Snapshot) -> String {
    let s = &snap.state;
    let mut out = match snap.block {
        Some(b) => format!(
            "ACL at block {} ({}), {} events applied\n",
            b.number, b.hash, snap.events_applied
        ),
        None => "ACL empty: nothing synced yet\n".to_owned(),
    };
    out += &format!(
        "minimum stake: operator {}, caller {}; unbonding {} s\n",
        eth(s.params.min_operator_stake),
        eth(s.params.min_caller_stake),
        s.params.unbonding_period
    );
    out += &format!("operators ({}):\n", s.operators.len());
    for (addr, op) in &s.operators {
        let state = if snap.is_operator(&op.node_key) {
            "active"
        } else {
            "inactive"
        };
        out += &format!(
            "  {addr} node {} stake {} [{state}] {}\n",
            op.node_key,
            eth(op.balance.stake),
            op.endpoint
        );
    }
    out += &format!("callers ({}):\n", s.callers.len());
    for (addr, b) in &s.callers {
        out += &format!(
            "  {addr} stake {} unbonding {}\n",
            eth(b.stake),
            eth(b.unbonding)
        );
    }
    out += &format!("identities ({}):\n", s.identities.len());
    for (id, i) in &s.identities {
        out += &format!(
            "  #{id} {} held by {} with {} key(s)\n",
            i.handle,
            i.holder,
            i.keys.len()
        );
    }
    out += &format!("repos ({}):\n", s.repos.len());
    for (id, r) in &s.repos {
        out += &format!(
            "  #{id} {}{} committers {} readers {}\n",
            r.name,
            if r.private { " (private)" } else { "" },
            r.committers.len(),
            r.readers.len()
        );
    }
    out
}
