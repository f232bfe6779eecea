// The dashboard in headless Chromium against a real node (started by the end-to-end
// test `web.rs`, which passes where everything is in the environment). The page
// loads from the node, a wallet in the page (an EIP-1193 provider backed by a local
// test key, as an injected wallet is) signs in through viem, the page shows the
// caller's role and stake and follows a deployment's logs; an unstaked wallet sees
// the node's refusal and its reason. Screenshots go to $HANZO_ARTIFACTS.

import assert from "node:assert/strict";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { privateKeyToAccount } from "viem/accounts";

const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is not set: this script runs from tests/tests/web.rs against a real node`);
  return v;
};
const page_url = `${env("HANZO_HTTP_URL")}/dashboard/`;
const caller = privateKeyToAccount(env("HANZO_CALLER_KEY"));
const stranger = privateKeyToAccount(env("HANZO_STRANGER_KEY"));
const container = env("HANZO_CONTAINER");
const artifacts = env("HANZO_ARTIFACTS");
rmSync(artifacts, { recursive: true, force: true });
mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.HANZO_CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

/** A page whose `window.ethereum` is a wallet holding `account`. */
async function walletPage(account) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  await context.exposeFunction("hanzoWallet", async (method, params) => {
    switch (method) {
      case "eth_requestAccounts":
      case "eth_accounts":
        return [account.address];
      case "eth_chainId":
        return "0x7a69";
      case "personal_sign": {
        const [data, address] = params;
        assert.equal(address.toLowerCase(), account.address.toLowerCase());
        return account.signMessage({ message: { raw: data } });
      }
      default:
        throw new Error(`the test wallet does not do ${method}`);
    }
  });
  await context.addInitScript(() => {
    window.ethereum = {
      request: ({ method, params }) => window.hanzoWallet(method, params ?? []),
      on() {},
      removeListener() {},
    };
  });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("response", (r) => {
    if (r.status() >= 400) errors.push(`${r.status()} from ${r.url()}`);
  });
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  return { page, errors };
}

let current;
const shot = (page, name) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });

try {
  // The staked caller.
  {
    const { page, errors } = await walletPage(caller);
    current = page;
    await page.goto(page_url);
    await page.locator("#chain").filter({ hasText: "ACL at block" }).waitFor({ timeout: 20_000 });
    await page.locator("#ready.ok").waitFor({ timeout: 20_000 });
    await shot(page, "1-public");
    await page.click("#signin");
    const who = page.locator("#who");
    await who.filter({ hasText: "role CALLER" }).waitFor({ timeout: 20_000 });
    const text = await who.textContent();
    assert.match(text, new RegExp(caller.address));
    assert.match(text, /stake 0.5 ETH/);
    await page.locator("#containers tr", { hasText: container }).locator("button").click();
    await page.locator("#logs").filter({ hasText: "hello from the dashboard" }).waitFor({ timeout: 20_000 });
    await page.locator("#repos tbody tr").first().waitFor({ timeout: 20_000 });
    await shot(page, "2-signed-in");
    assert.equal(await page.locator("#error").textContent(), "");
    assert.deepEqual(errors, [], "the page logged errors");
  }
  // A wallet without stake: the node's refusal, with its reason, on the page.
  {
    const { page } = await walletPage(stranger);
    current = page;
    await page.goto(page_url);
    await page.locator("#chain").filter({ hasText: "ACL at block" }).waitFor({ timeout: 20_000 });
    await page.click("#signin");
    const error = page.locator("#error");
    await error.filter({ hasText: "PERMISSION_DENIED" }).waitFor({ timeout: 20_000 });
    assert.match(await error.textContent(), /deposit with `hanzo-node caller deposit`/);
    assert.ok(await page.locator(".private").isHidden());
    await shot(page, "3-unstaked");
  }
  console.log(`browser test passed; screenshots in ${artifacts}`);
} catch (e) {
  if (current) await shot(current, "failure").catch(() => {});
  console.error(`browser test failed; the page as it was is ${join(artifacts, "failure.png")}`);
  throw e;
} finally {
  await browser.close();
}
