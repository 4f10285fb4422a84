// recall console: the hash router over the pages (Model, User, new-user builder, Item,
// Live, Experiment). Read-only: the pages call only GET endpoints and the read-only POSTs
// /v1/recall and /v1/items/{id}/similar. Every API error shows the envelope's message in
// #error (api.js).

import { clearError, showError } from "./api.js";
import { h } from "./dom.js";
import { builderPage } from "./builder.js";
import { experimentPage } from "./experiment.js";
import { itemPage } from "./item.js";
import { livePage } from "./live.js";
import { modelPage } from "./model.js";
import { userPage } from "./user.js";

const view = document.getElementById("view");

let current = null; // AbortController of the page on screen

async function route() {
  current?.abort();
  current = new AbortController();
  clearError();
  const hash = location.hash || "#/model";
  const parts = hash.slice(2).split("/");
  const page = parts[0];
  const arg = parts.slice(1).join("/");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === (page === "item" ? "user" : page));
  try {
    if (page === "model" || page === "") await modelPage();
    else if (page === "user" && arg) await userPage(decodeURIComponent(arg));
    else if (page === "user") await builderPage();
    else if (page === "item" && arg) await itemPage(decodeURIComponent(arg));
    else if (page === "live") await livePage(current.signal);
    else if (page === "experiment") await experimentPage(current.signal);
    else {
      view.replaceChildren(h("h1", {}, "Not found"), h("p", {}, "No such page: ", h("code", {}, hash), ". Try ", h("a", { href: "#/model" }, "Model"), "."));
    }
  } catch (e) {
    if (view.querySelector("p.muted")?.textContent === "loading…") view.querySelector("p.muted").textContent = "could not load this page";
    showError(e);
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (e) => showError(e.reason));
route();
