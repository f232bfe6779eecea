// The client against a real node (started by the end-to-end test `web.rs`, which
// passes where it is in the environment): sign-in over gRPC and gRPC-Web with viem,
// SIWE messages from the `siwe` npm package, ReCap-scoped sessions, the refusal an
// unstaked account gets, automatic refresh, a deployment's logs and events, and
// typed errors. Run: `HANZO_GRPC_URL=… HANZO_CALLER_KEY=… HANZO_STRANGER_KEY=… node --test test/`.

import assert from "node:assert/strict";
import { test } from "node:test";

import { SiweMessage } from "siwe";
import { createWalletClient, custom } from "viem";
import { privateKeyToAccount } from "viem/accounts";

import { Code, ConnectError, HanzoNode, Role } from "../dist/index.js";
import { connect } from "../dist/node.js";

const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is not set: this test runs from tests/tests/web.rs against a real node`);
  return v;
};
const url = env("HANZO_GRPC_URL");
const caller = privateKeyToAccount(env("HANZO_CALLER_KEY"));
const stranger = privateKeyToAccount(env("HANZO_STRANGER_KEY"));

/** A viem wallet client as a dApp gets one, signing with a local key. */
const walletClient = (account) =>
  createWalletClient({
    account,
    transport: custom({
      async request({ method }) {
        throw new Error(`${method}: this wallet has no chain RPC`);
      },
    }),
  });

const refusal = async (promise) => {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `${e}`);
    return e;
  }
  assert.fail("the call was not refused");
};

test("a staked wallet signs in over gRPC and gRPC-Web and reads its status", async () => {
  for (const node of [connect(url), HanzoNode.web(url)]) {
    const health = await node.health();
    assert.ok(health.nodeKey.length > 0);
    const s = await node.signIn(walletClient(caller));
    assert.equal(s.address, caller.address);
    assert.equal(s.role, Role.CALLER);
    assert.deepEqual(s.abilities, []);
    const status = await node.status();
    assert.equal(status.address, caller.address);
    assert.equal(status.role, Role.CALLER);
    assert.ok(BigInt(status.stakeWei) > 0n);
  }
});

test("an unstaked wallet is told why and how to fix it", async () => {
  const e = await refusal(HanzoNode.web(url).signIn(stranger));
  assert.equal(e.code, Code.PermissionDenied);
  assert.match(e.rawMessage, /deposit with `hanzo-node caller deposit`/);
  // Without sign-in, a call that needs it says how to sign in.
  const e2 = await refusal(HanzoNode.web(url).status());
  assert.equal(e2.code, Code.Unauthenticated);
  assert.match(e2.rawMessage, /AuthService\/SignIn/);
});

test("a message written by the siwe npm package signs in", async () => {
  const node = connect(url);
  const n = await node.auth.getNonce({});
  const now = new Date();
  const message = new SiweMessage({
    scheme: "http",
    domain: n.domain,
    address: caller.address,
    statement: "Sign in to the node with the siwe package.",
    uri: "https://app.example/login",
    version: "1",
    chainId: Number(n.chainId),
    nonce: n.nonce,
    issuedAt: now.toISOString(),
    expirationTime: new Date(now.getTime() + 120_000).toISOString(),
    resources: [n.uri],
  }).prepareMessage();
  const signature = await caller.signMessage({ message });
  const r = await node.auth.signIn({
    message,
    signature: Uint8Array.from(Buffer.from(signature.slice(2), "hex")),
  });
  assert.equal(r.address, caller.address);

  // The same message again: the nonce is spent.
  const e = await refusal(
    node.auth.signIn({ message, signature: Uint8Array.from(Buffer.from(signature.slice(2), "hex")) }),
  );
  assert.equal(e.code, Code.Unauthenticated);
  assert.match(e.rawMessage, /nonce already used/);
});

test("messages for another chain, node or domain, or expired, are refused with the reason", async () => {
  const cases = [
    [{ chainId: 1 }, /chain id 1, but this node follows chain/],
    [{ uri: "hanzo-node://0xsomeoneelse", resources: [] }, /does not name this node/],
    [{ domain: "phish.example" }, /for domain "phish.example", which this node does not accept/],
    [{ expirationTime: new Date(Date.now() - 1000).toISOString() }, /expired at/],
  ];
  for (const [change, reason] of cases) {
    const node = connect(url);
    const n = await node.auth.getNonce({});
    const fields = {
      domain: n.domain,
      address: caller.address,
      uri: n.uri,
      version: "1",
      chainId: Number(n.chainId),
      nonce: n.nonce,
      issuedAt: new Date().toISOString(),
      expirationTime: new Date(Date.now() + 120_000).toISOString(),
      resources: [n.uri],
      ...change,
    };
    const message = new SiweMessage(fields).prepareMessage();
    const signature = await caller.signMessage({ message });
    const e = await refusal(
      node.auth.signIn({ message, signature: Uint8Array.from(Buffer.from(signature.slice(2), "hex")) }),
    );
    assert.equal(e.code, Code.Unauthenticated, `${JSON.stringify(change)}: ${e.rawMessage}`);
    assert.match(e.rawMessage, reason);
  }
});

test("a ReCap-scoped session calls what it was granted and nothing else", async () => {
  const node = HanzoNode.web(url);
  const s = await node.signIn(caller, {
    statement: "Let the status page read my node.",
    abilities: { "node/read": [{}], "inference/use": [{ max_tokens: 1000 }] },
  });
  assert.deepEqual(s.abilities, ["node/read", "inference/use"]);
  assert.equal(s.tokenBudget, 1000n);
  const status = await node.status();
  assert.equal(status.address, caller.address);
  const e = await refusal(node.deploy({ compose: "services: {}", name: "x" }));
  assert.equal(e.code, Code.PermissionDenied);
  assert.match(e.rawMessage, /needs workloads\/write, which this session's ReCap does not grant \(it grants node\/read, inference\/use/);
  const e2 = await refusal(node.repos.listRepos({}));
  assert.match(e2.rawMessage, /needs repos\/read/);
});

test("a ReCap's token budget bounds the session's inference", async () => {
  const node = connect(url);
  const s = await node.signIn(caller, { abilities: { "inference/use": [{ max_tokens: 12 }] } });
  assert.equal(s.tokenBudget, 12n);
  let used = 0n;
  let refused;
  for (let i = 0; i < 20 && !refused; i++) {
    try {
      const r = await node.embed("mini", ["the cat sat on the mat"]);
      assert.equal(r.embeddings.length, 1);
      used += r.usage.promptTokens;
    } catch (e) {
      refused = e;
    }
  }
  assert.ok(refused, "the budget never ran out");
  assert.ok(used >= 12n, `refused after only ${used} tokens`);
  assert.equal(refused.code, Code.ResourceExhausted);
  assert.match(refused.rawMessage, /ReCap grants inference\/use up to 12 tokens and \d+ are used/);
  // A new session has its own budget.
  await node.signIn(caller, { abilities: { "inference/use": [{ max_tokens: 12 }] } });
  await node.embed("mini", ["a bird"]);
});

test("a session refreshes itself before it expires", async () => {
  const node = connect(url);
  const first = await node.signIn(caller);
  // As if the token were about to expire: the next call refreshes it first (a
  // second later, so the new token's expiry differs).
  await new Promise((done) => setTimeout(done, 1100));
  node.session = { ...first, expiresAt: Math.floor(Date.now() / 1000) + 5 };
  await node.status();
  assert.notEqual(node.session.token, first.token);
  assert.ok(node.session.expiresAt > first.expiresAt);
});

test("a deployment's logs and events stream over gRPC-Web", async () => {
  const node = HanzoNode.web(url);
  await node.signIn(caller);
  const name = `ts-${Date.now()}`;
  const spec = {
    name,
    services: [{ name: "echo", command: "sh", args: ["-c", "echo hello from ts; sleep 600"] }],
  };
  const deployed = await node.deploy({ spec });
  assert.ok(deployed.status?.deployment);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 30_000);
  let seen = "";
  try {
    for await (const line of node.logs(name, { follow: true, signal: abort.signal })) {
      seen += new TextDecoder().decode(line.line);
      if (seen.includes("hello from ts")) break;
    }
  } finally {
    clearTimeout(timer);
  }
  assert.match(seen, /hello from ts/);
  // The deployment's events so far come first: wait at most 30 s for one.
  const events = new AbortController();
  const eventsTimer = setTimeout(() => events.abort(), 30_000);
  let first;
  try {
    for await (const ev of node.events(name, events.signal)) {
      first = ev;
      break;
    }
  } catch (e) {
    if (!events.signal.aborted) throw e;
  } finally {
    clearTimeout(eventsTimer);
  }
  assert.ok(first, "no deployment event within 30 s");
  assert.equal(first.deployment, name);
  await node.node.remove({ deployment: name });
});
