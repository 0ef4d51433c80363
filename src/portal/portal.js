// coregate developer portal: the "try it" forms, sign-up, and a
// developer's key. Everything shown is set with textContent, never as
// HTML. Served as a file of the portal: the pages run no inline script.
"use strict";

async function post(path, data) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(data),
  });
  let v = null;
  try { v = await r.json(); } catch (_) { v = { message: "not JSON" }; }
  return { status: r.status, v };
}

function encodePath(template, form) {
  return template.replace(/\{([^}]+)\}/g, (_, name) => {
    const el = form.elements["path:" + name];
    const value = el ? el.value : "";
    if (name.endsWith("+")) {
      return value.split("/").map(encodeURIComponent).join("/");
    }
    return encodeURIComponent(value);
  });
}

async function tryIt(form) {
  const d = form.dataset;
  const method = form.elements["method"] ? form.elements["method"].value : d.method;
  const query = [];
  const headers = [];
  for (const el of form.elements) {
    if (!el.name || !el.value) continue;
    if (el.name.startsWith("query:")) {
      query.push(encodeURIComponent(el.name.slice(6)) + "=" + encodeURIComponent(el.value));
    } else if (el.name.startsWith("header:")) {
      headers.push([el.name.slice(7), el.value]);
    }
  }
  if (form.elements["rawquery"] && form.elements["rawquery"].value) {
    query.push(form.elements["rawquery"].value);
  }
  let body = "";
  if (form.elements["body"] && method !== "GET" && method !== "HEAD") {
    body = form.elements["body"].value;
    if (body && form.elements["content-type"] && form.elements["content-type"].value) {
      headers.push(["content-type", form.elements["content-type"].value]);
    }
  }
  const out = form.querySelector(".result");
  out.hidden = false;
  out.querySelector(".status").textContent = "…";
  const { status, v } = await post("/try", {
    api: d.api, stage: d.stage, method, path: encodePath(d.path, form),
    query: query.join("&"), headers, body,
  });
  if (status !== 200) {
    out.querySelector(".status").textContent = "portal error " + status;
    out.querySelector(".headers").textContent = "";
    out.querySelector(".body").textContent = v.message || "";
    return;
  }
  out.querySelector(".status").textContent = String(v.status);
  out.querySelector(".headers").textContent =
    v.headers.map((h) => h[0] + ": " + h[1]).join("\n");
  out.querySelector(".body").textContent = v.body + (v.truncated ? "\n[cut]" : "");
}

async function signUp(form) {
  const err = document.getElementById("signup-error");
  err.hidden = true;
  const { status, v } = await post("/signup", {
    plan: form.elements["plan"].value, label: form.elements["label"].value,
  });
  if (status !== 201) {
    err.textContent = v.message || ("error " + status);
    err.hidden = false;
    return;
  }
  const box = document.getElementById("new-key");
  box.querySelector(".key").textContent = v.key;
  box.querySelector(".state").textContent = v.state === "pending"
    ? "This key waits for the operator's approval: it works once approved."
    : "This key works now.";
  box.dataset.state = v.state;
  box.hidden = false;
  const mine = document.querySelector("#key-form input[name=key]");
  if (mine) mine.value = v.key;
}

async function showKey(form) {
  const err = document.getElementById("key-error");
  const info = document.getElementById("key-info");
  err.hidden = true;
  const { status, v } = await post("/key", { key: form.elements["key"].value });
  if (status !== 200) {
    info.hidden = true;
    err.textContent = v.message || ("error " + status);
    err.hidden = false;
    return;
  }
  const set = (cls, text) => { info.querySelector("." + cls).textContent = text; };
  set("name", v.name);
  set("plan", v.usage_plan || "none");
  set("state", v.state);
  set("created", v.created || "");
  if (v.quota) {
    set("quota", v.quota.limit + " (" + v.quota.period + ")");
    set("used", String(v.quota.used));
    set("left", String(v.quota.left));
  } else {
    set("quota", v.usage_error ? "unknown: " + v.usage_error : "none");
    set("used", "");
    set("left", "");
  }
  let total = 0;
  const tbody = info.querySelector(".days tbody");
  tbody.replaceChildren();
  for (const d of v.days) {
    total += d.requests;
    const tr = document.createElement("tr");
    for (const x of [d.day, String(d.requests)]) {
      const td = document.createElement("td");
      td.textContent = x;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  set("total", String(total));
  info.dataset.state = v.state;
  info.hidden = false;
  document.getElementById("revoke").hidden = !v.issued_by_portal || v.state === "revoked";
}

async function revoke() {
  const form = document.getElementById("key-form");
  const err = document.getElementById("key-error");
  const { status, v } = await post("/revoke", { key: form.elements["key"].value });
  if (status !== 200) {
    err.textContent = v.message || ("error " + status);
    err.hidden = false;
    return;
  }
  await showKey(form);
}

document.addEventListener("submit", (e) => {
  const form = e.target;
  if (form.classList.contains("try")) {
    e.preventDefault();
    tryIt(form);
  } else if (form.id === "signup-form") {
    e.preventDefault();
    signUp(form);
  } else if (form.id === "key-form") {
    e.preventDefault();
    showKey(form);
  }
});

document.addEventListener("click", (e) => {
  if (e.target.id === "revoke") revoke();
});
