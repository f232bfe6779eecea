// @hanzo/node-client: a hanzo-node's gRPC services from TypeScript, in the browser
// (gRPC-Web) and in Node.js (gRPC, from "@hanzo/node-client/node").
//
//   const node = HanzoNode.web("http://127.0.0.1:8682");
//   await node.signIn(walletClient);          // a viem wallet client or local account
//   const status = await node.status();
//   for await (const line of node.logs("web", { follow: true })) …
//
// Sessions refresh themselves before they expire; a session past the node's longest
// is opened again with the same wallet.

import { type Client, type Interceptor, type Transport, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { Address, Hex, LocalAccount, WalletClient } from "viem";
import { createSiweMessage } from "viem/siwe";

import { AuthService, type Role } from "./gen/hanzo/node/v1/auth_pb.js";
import { ChainService } from "./gen/hanzo/node/v1/chain_pb.js";
import { InferenceService } from "./gen/hanzo/node/v1/inference_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  type DeployRequestSchema,
  type Event,
  type LogLine,
  NodeService,
} from "./gen/hanzo/node/v1/node_pb.js";
import { OperatorService } from "./gen/hanzo/node/v1/operator_pb.js";
import { RepoService } from "./gen/hanzo/node/v1/repo_pb.js";

export * from "./gen/hanzo/node/v1/auth_pb.js";
export * from "./gen/hanzo/node/v1/chain_pb.js";
export * from "./gen/hanzo/node/v1/inference_pb.js";
export * from "./gen/hanzo/node/v1/node_pb.js";
export * from "./gen/hanzo/node/v1/operator_pb.js";
export * from "./gen/hanzo/node/v1/repo_pb.js";
export { ConnectError, Code } from "@connectrpc/connect";

/** What signs in: a viem wallet client (an injected provider such as MetaMask, or
 * one with a local account) or a viem local account. */
export type Wallet = WalletClient | LocalAccount;

/** EIP-5573 ReCap abilities on the node, e.g. `{ "inference/use": [{ max_tokens:
 * 1000 }], "workloads/read": [{}] }`: the session may do only these. */
export type Abilities = Record<string, Array<Record<string, unknown>>>;

/** How the SIWE message is written. In a browser the defaults are what wallets expect:
 * the page's own host as `domain`, its origin as `URI`, and the node named in
 * `Resources`. Elsewhere, the node's own domain and URI. */
export interface SignInOptions {
  domain?: string;
  scheme?: string;
  uri?: string;
  statement?: string;
  /** Scope the session with a ReCap. */
  abilities?: Abilities;
  /** Seconds the signed message is valid for (default 300). */
  validFor?: number;
}

/** A signed-in session. */
export interface Session {
  token: string;
  /** Unix seconds. */
  expiresAt: number;
  address: string;
  role: Role;
  /** Empty: every ability the caller's role allows. */
  abilities: string[];
  /** 0: no limit. */
  tokenBudget: bigint;
}

const RECAP_TEXT =
  "I further authorize the stated URI to perform the following actions on my behalf:";

/** The statement text EIP-5573 asks for, as the node checks it. */
export function recapStatement(resource: string, abilities: Abilities): string {
  const byNamespace = new Map<string, string[]>();
  for (const ability of Object.keys(abilities).sort()) {
    const [ns, name] = ability.split("/", 2);
    if (!ns || !name) throw new Error(`ability ${ability} is not namespace/name`);
    byNamespace.set(ns, [...(byNamespace.get(ns) ?? []), name]);
  }
  let text = RECAP_TEXT;
  let n = 0;
  for (const ns of [...byNamespace.keys()].sort()) {
    n += 1;
    const names = (byNamespace.get(ns) ?? []).map((a) => `'${a}'`).join(", ");
    text += ` (${n}) '${ns}': ${names} for '${resource}'.`;
  }
  return text;
}

/** The `urn:recap:` resource granting `abilities` on `resource`. */
export function recapResource(resource: string, abilities: Abilities): string {
  const json = JSON.stringify({ att: { [resource]: abilities }, prf: [] });
  const bytes = new TextEncoder().encode(json);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  const b64 = btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return `urn:recap:${b64}`;
}

function isLocal(w: Wallet): w is LocalAccount {
  return (w as LocalAccount).type === "local";
}

async function signer(w: Wallet): Promise<{ address: Address; sign: (m: string) => Promise<Hex> }> {
  if (isLocal(w)) return { address: w.address, sign: (message) => w.signMessage({ message }) };
  // A client's own account (a local one signs in-process); else the wallet's first.
  const account = w.account ?? (await w.requestAddresses())[0];
  if (!account) throw new Error("the wallet has no account to sign in with");
  const address = typeof account === "string" ? account : account.address;
  return { address, sign: (message) => w.signMessage({ account, message }) };
}

function hexToBytes(hex: Hex): Uint8Array {
  const clean = hex.slice(2);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** Makes a transport carrying the given interceptors. */
export type TransportFactory = (interceptors: Interceptor[]) => Transport;

/** One node: typed clients for every service, sign-in and automatic refresh. */
export class HanzoNode {
  readonly node: Client<typeof NodeService>;
  readonly auth: Client<typeof AuthService>;
  readonly chain: Client<typeof ChainService>;
  readonly repos: Client<typeof RepoService>;
  readonly inference: Client<typeof InferenceService>;
  readonly operator: Client<typeof OperatorService>;
  /** The current session, once signed in. */
  session: Session | undefined;
  #wallet: Wallet | undefined;
  #options: SignInOptions = {};
  #renewing: Promise<void> | undefined;

  constructor(transport: TransportFactory) {
    const authorize: Interceptor = (next) => async (req) => {
      if (req.service.typeName !== AuthService.typeName && this.session) {
        await this.#fresh();
        req.header.set("authorization", `Bearer ${this.session.token}`);
      }
      return next(req);
    };
    const t = transport([authorize]);
    this.node = createClient(NodeService, t);
    this.auth = createClient(AuthService, t);
    this.chain = createClient(ChainService, t);
    this.repos = createClient(RepoService, t);
    this.inference = createClient(InferenceService, t);
    this.operator = createClient(OperatorService, t);
  }

  /** A node reached over gRPC-Web (browsers; Node.js too) at `baseUrl`. */
  static web(baseUrl: string): HanzoNode {
    return new HanzoNode((interceptors) => createGrpcWebTransport({ baseUrl, interceptors }));
  }

  /** Signs in with a wallet: the node's nonce in a SIWE message the wallet signs. */
  async signIn(wallet: Wallet, options: SignInOptions = {}): Promise<Session> {
    const { address, sign } = await signer(wallet);
    const n = await this.auth.getNonce({});
    const page = typeof location === "undefined" ? undefined : location;
    const inBrowser = page !== undefined && page.protocol.startsWith("http");
    const now = Math.floor(Date.now() / 1000);
    const resources = [n.uri];
    let statement = options.statement;
    if (options.abilities) {
      const text = recapStatement(n.uri, options.abilities);
      statement = statement ? `${statement} ${text}` : text;
      resources.push(recapResource(n.uri, options.abilities));
    }
    const message = createSiweMessage({
      domain: options.domain ?? (inBrowser ? page.host : n.domain),
      scheme: options.scheme ?? (inBrowser ? page.protocol.replace(/:$/, "") : undefined),
      address,
      statement,
      uri: options.uri ?? (inBrowser ? page.origin : n.uri),
      version: "1",
      chainId: Number(n.chainId),
      nonce: n.nonce,
      issuedAt: new Date(now * 1000),
      expirationTime: new Date((now + (options.validFor ?? 300)) * 1000),
      resources,
    });
    const signature = await sign(message);
    const r = await this.auth.signIn({ message, signature: hexToBytes(signature) });
    this.#wallet = wallet;
    this.#options = options;
    this.session = {
      token: r.token,
      expiresAt: Number(r.expiresAt),
      address: r.address,
      role: r.role,
      abilities: r.abilities,
      tokenBudget: r.tokenBudget,
    };
    return this.session;
  }

  /** A fresh token for the session now (otherwise done a minute before expiry). */
  async refresh(): Promise<Session> {
    if (!this.session) throw new Error("not signed in");
    const r = await this.auth.refresh({ token: this.session.token });
    this.session = { ...this.session, token: r.token, expiresAt: Number(r.expiresAt), role: r.role };
    return this.session;
  }

  async #fresh(): Promise<void> {
    const s = this.session;
    if (!s || s.expiresAt - Date.now() / 1000 > 60) return;
    this.#renewing ??= (async () => {
      try {
        await this.refresh();
      } catch (err) {
        // Past the node's longest session: sign in again with the same wallet.
        if (!this.#wallet) throw err;
        await this.signIn(this.#wallet, this.#options);
      }
    })().finally(() => {
      this.#renewing = undefined;
    });
    await this.#renewing;
  }

  /** Is the node up (no sign-in needed). */
  health() {
    return this.node.getHealth({});
  }

  /** The node's sync, peers and repos, and the caller's role, stake and rate. */
  status() {
    return this.node.getStatus({});
  }

  /** Deploys a spec or a docker-compose.yml. */
  deploy(req: MessageInitShape<typeof DeployRequestSchema>) {
    return this.node.deploy(req);
  }

  /** A deployment's log lines; with `follow`, until `signal` aborts. */
  logs(
    deployment: string,
    opts: { container?: string; tail?: number; follow?: boolean; signal?: AbortSignal } = {},
  ): AsyncIterable<LogLine> {
    const { signal, ...rest } = opts;
    return this.node.getLogs({ deployment, ...rest }, { signal });
  }

  /** A deployment's events so far, then new ones until `signal` aborts. */
  events(deployment: string, signal?: AbortSignal): AsyncIterable<Event> {
    return this.node.getEvents({ deployment }, { signal });
  }

  /** Embeddings of `texts` with `model`. */
  embed(model: string, texts: string[]) {
    return this.inference.embed({ model, texts });
  }

  /** Generated text, delta by delta. */
  async *generate(
    model: string,
    messages: Array<{ role: string; content: string }>,
    opts: { maxTokens?: number; signal?: AbortSignal } = {},
  ): AsyncIterable<string> {
    const stream = this.inference.generate(
      { model, messages, maxTokens: opts.maxTokens ?? 0 },
      { signal: opts.signal },
    );
    for await (const chunk of stream) if (chunk.delta) yield chunk.delta;
  }

  /** The caller's inference usage on this node. */
  usage() {
    return this.inference.getUsage({});
  }
}
