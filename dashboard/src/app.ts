// The node's dashboard: public state from the HTTP listener (`/acl`, `/readiness`),
// then, once a wallet signed in, the node over gRPC-Web with @hanzo/node-client:
// the caller's role and stake, peers, repos and who signed each push, the caller's
// deployments with live logs, and its inference usage. Every refusal is shown with
// the node's reason.

import {
  ConnectError,
  ContainerState,
  HanzoNode,
  Role,
  ServingStatus,
} from "@hanzo/node-client";
import { type EIP1193Provider, createWalletClient, custom } from "viem";

declare global {
  interface Window {
    ethereum?: EIP1193Provider;
  }
}

interface Config {
  grpc_port: number | null;
  chain_id: number;
  node: string;
}

interface Acl {
  block: { number: number; time: number } | null;
  params: { min_operator_stake: string; min_caller_stake: string };
  operators: Array<{ address: string; node_key: string; endpoint: string; stake: string; active: boolean }>;
  callers: Array<{ address: string; stake: string; active: boolean }>;
}

const $ = <T extends HTMLElement = HTMLElement>(sel: string) => document.querySelector(sel) as T;

function cell(text: string, cls?: string): HTMLTableCellElement {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function row(table: string, cells: Array<HTMLTableCellElement | string>): HTMLTableRowElement {
  const tr = document.createElement("tr");
  for (const c of cells) tr.append(typeof c === "string" ? cell(c) : c);
  $(`${table} tbody`).append(tr);
  return tr;
}

function clear(table: string) {
  $(`${table} tbody`).replaceChildren();
}

function short(s: string, n = 10): string {
  return s.length > 2 * n ? `${s.slice(0, n)}…${s.slice(-6)}` : s;
}

/** Shows a failure as the node worded it: the gRPC code and the reason. */
function fail(what: string, err: unknown) {
  const text =
    err instanceof ConnectError
      ? `${what}: ${codeName(err.code)}: ${err.rawMessage}`
      : `${what}: ${err instanceof Error ? err.message : String(err)}`;
  $("#error").textContent = text;
}

function codeName(code: number): string {
  const names = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
  ];
  return names[code] ?? String(code);
}

function ago(unixSeconds: bigint | number): string {
  const s = Math.max(0, Math.floor(Date.now() / 1000 - Number(unixSeconds)));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

async function publicState(config: Config) {
  const ready = await fetch("/readiness");
  const text = (await ready.text()).trim();
  $("#ready").textContent = text;
  $("#ready").className = ready.ok ? "ok" : "bad";
  const acl = (await (await fetch("/acl")).json()) as Acl;
  $("#chain").textContent = acl.block
    ? `chain ${config.chain_id}, ACL at block ${acl.block.number} (${ago(acl.block.time)}); minimum stake: operator ${acl.params.min_operator_stake}, caller ${acl.params.min_caller_stake}`
    : `chain ${config.chain_id}: nothing synced yet`;
  clear("#operators");
  if (acl.operators.length === 0) row("#operators", [cell("no operators registered", "muted"), "", "", "", ""]);
  for (const op of acl.operators) {
    row("#operators", [
      short(op.address),
      short(op.node_key),
      op.endpoint,
      op.stake,
      cell(op.active ? "yes" : "no", op.active ? "ok" : "bad"),
    ]);
  }
}

async function privateState(node: HanzoNode) {
  const status = await node.status();
  const s = node.session;
  const role = Role[status.role] ?? String(status.role);
  $("#who").textContent = `${status.address} · role ${role} · stake ${formatEth(status.stakeWei)} · ${status.rateLimitPerSec.toFixed(0)} requests/s${s && s.abilities.length ? ` · scope ${s.abilities.join(", ")}` : ""}`;
  $("#who").className = "";
  const h = status.health;
  const serving = h?.status === ServingStatus.SERVING;
  $("#status").textContent = `${serving ? "serving" : "not serving"} · version ${h?.version ?? "?"} · block ${h?.chain?.block ?? "?"} of ${h?.chain?.head ?? "?"} · ${status.repos} repos · peers: ${status.peers.length ? status.peers.map((p) => short(p, 8)).join(", ") : "none"}`;
  document.querySelector<HTMLElement>(".private")!.hidden = false;

  clear("#repos");
  try {
    const { repos } = await node.repos.listRepos({});
    for (const repo of repos) {
      const { refs } = await node.repos.getRefs({ repo: repo.name });
      if (refs.length === 0) row("#repos", [repo.name, cell("no refs here", "muted"), "", "", "", ""]);
      for (const r of refs) {
        row("#repos", [
          repo.name,
          r.name,
          short(r.target, 8),
          r.pusher || "—",
          short(r.key, 12),
          r.pushedAt ? ago(r.pushedAt) : "—",
        ]);
      }
    }
  } catch (e) {
    fail("repositories", e);
  }

  clear("#containers");
  try {
    const { containers } = await node.node.listContainers({});
    for (const c of containers) {
      const button = document.createElement("button");
      button.textContent = "follow logs";
      button.dataset.deployment = c.deployment;
      button.onclick = () => void follow(node, c.deployment, c.container);
      const td = document.createElement("td");
      td.append(button);
      row("#containers", [c.container, c.deployment, ContainerState[c.state] ?? String(c.state), td]);
    }
    if (containers.length === 0) row("#containers", [cell("no deployments", "muted"), "", "", ""]);
  } catch (e) {
    fail("deployments", e);
  }

  clear("#usage");
  try {
    const { usage } = await node.usage();
    for (const u of usage) {
      row("#usage", [u.model, String(u.requests), String(u.promptTokens), String(u.completionTokens)]);
    }
    if (usage.length === 0) row("#usage", [cell("no inference yet", "muted"), "", "", ""]);
  } catch (e) {
    fail("inference usage", e);
  }
}

let following: AbortController | undefined;

async function follow(node: HanzoNode, deployment: string, container: string) {
  following?.abort();
  const abort = new AbortController();
  following = abort;
  const out = $("#logs");
  out.hidden = false;
  out.textContent = "";
  out.dataset.deployment = deployment;
  const decoder = new TextDecoder();
  try {
    for await (const line of node.logs(deployment, { container, follow: true, tail: 100, signal: abort.signal })) {
      if (line.keepAlive) continue;
      out.textContent += `${line.container} | ${decoder.decode(line.line)}${line.line.at(-1) === 10 ? "" : "\n"}`;
      out.scrollTop = out.scrollHeight;
    }
  } catch (e) {
    if (!abort.signal.aborted) fail(`logs of ${deployment}`, e);
  }
}

function formatEth(wei: string): string {
  const w = BigInt(wei || "0");
  const whole = w / 10n ** 18n;
  const frac = (w % 10n ** 18n).toString().padStart(18, "0").replace(/0+$/, "").slice(0, 4);
  return `${whole}${frac ? `.${frac}` : ""} ETH`;
}

async function main() {
  const config = (await (await fetch("config.json")).json()) as Config;
  $("#node").textContent = short(config.node, 10);
  await publicState(config).catch((e) => fail("chain state", e));
  setInterval(() => void publicState(config).catch((e) => fail("chain state", e)), 5000);
  if (config.grpc_port === null) {
    $("#signin").setAttribute("disabled", "");
    $("#who").textContent = "this node serves no gRPC";
    return;
  }
  const node = HanzoNode.web(`${location.protocol}//${location.hostname}:${config.grpc_port}`);
  $("#signin").onclick = async () => {
    $("#error").textContent = "";
    if (!window.ethereum) {
      fail("sign in", new Error("no wallet in this browser (window.ethereum)"));
      return;
    }
    try {
      const wallet = createWalletClient({ transport: custom(window.ethereum) });
      await node.signIn(wallet);
      await privateState(node);
    } catch (e) {
      fail("sign in", e);
    }
  };
}

void main();
