// A minimal browser CDS Hooks client, like the official sandbox: ES384 JWTs signed with WebCrypto, fetch() to a
// CDS service on another origin (CORS, preflight for the Authorization header), cards rendered as text.
"use strict";

const encoder = new TextEncoder();
const base64url = (bytes) =>
  btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const segment = (value) => base64url(encoder.encode(JSON.stringify(value)));

async function signedJwt(cfg, audience) {
  const key = await crypto.subtle.importKey("jwk", cfg.privateJwk, { name: "ECDSA", namedCurve: "P-384" }, false, [
    "sign",
  ]);
  const now = Math.floor(Date.now() / 1000);
  const header = segment({ alg: "ES384", typ: "JWT", kid: cfg.kid });
  const payload = segment({ iss: cfg.iss, aud: audience, iat: now, exp: now + 300, jti: crypto.randomUUID() });
  const signature = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-384" }, key, encoder.encode(`${header}.${payload}`));
  return `${header}.${payload}.${base64url(signature)}`; // WebCrypto's ECDSA output is r||s, the JWS form
}

async function call(cfg, method, path, body) {
  const url = cfg.base + path;
  const headers = { Accept: "application/json", Authorization: `Bearer ${await signedJwt(cfg, url)}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: response.status, body: await response.json() };
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function showStatus(text) {
  document.getElementById("status").textContent = text;
}

async function sendFeedback(cfg, serviceId, card, suggestion) {
  const feedback = {
    card: card.uuid,
    outcome: "accepted",
    acceptedSuggestions: [{ id: suggestion.uuid }],
    outcomeTimestamp: new Date().toISOString(),
  };
  const answer = await call(cfg, "POST", `/cds-services/${serviceId}/feedback`, { feedback: [feedback] });
  showStatus(`feedback ${answer.status}`);
}

function renderCard(cfg, serviceId, card) {
  const article = element("article", undefined, `card ${card.indicator}`);
  article.dataset.uuid = card.uuid;
  article.append(element("h2", card.summary), element("p", `Source: ${card.source.label}`, "source"));
  article.append(element("pre", card.detail || "", "detail"));
  for (const suggestion of card.suggestions || []) {
    const button = element("button", suggestion.label);
    button.type = "button";
    button.dataset.actions = (suggestion.actions || []).map((a) => `${a.type} ${a.resourceId || ""}`).join(";");
    button.addEventListener("click", () => sendFeedback(cfg, serviceId, card, suggestion));
    article.append(button);
  }
  return article;
}

async function run(cfg) {
  const discovery = await call(cfg, "GET", "/cds-services");
  const list = document.getElementById("services");
  for (const service of discovery.body.services || []) list.append(element("li", `${service.id} (${service.hook})`));
  const hook = await call(cfg, "POST", `/cds-services/${cfg.serviceId}`, cfg.request);
  const cards = document.getElementById("cards");
  for (const card of hook.body.cards || []) cards.append(renderCard(cfg, cfg.serviceId, card));
  showStatus(`discovery ${discovery.status}, hook ${hook.status}`);
  return { discovery: discovery.status, hook: hook.status, cards: (hook.body.cards || []).length };
}

window.cdsClient = { run };
