// New-user builder (#/user): search items by title, pick a history, and see what
// POST /v1/recall {"history": [...]} answers for it.

import { api, clearError, showError } from "./api.js";
import { attrText, card, h, itemTitle, table } from "./dom.js";
import { controls, newestAnswer, userIdForm } from "./recall-panel.js";

const view = document.getElementById("view");

/** Renders #/user (the new-user builder) in #view. */
export async function builderPage() {
  const picked = new Map(); // item id -> attributes
  const pickedBox = h("div", { class: "chips", "data-testid": "picked-items" });
  const results = h("div", {});
  const recBox = h("div", {}, h("p", { class: "muted" }, "Pick a few items to see what a user with that history gets."));
  const answers = newestAnswer(recBox);
  const run = async (opts) => {
    if (picked.size === 0) {
      clearError();
      answers.cancel(); // an answer still on its way is not shown
      recBox.replaceChildren(h("p", { class: "muted" }, "Pick a few items to see what a user with that history gets."));
      return;
    }
    const body = { history: [...picked.keys()], k: opts.k, exclude_seen: opts.exclude_seen, with_attributes: true };
    if (opts.filter !== undefined) body.filter = opts.filter;
    await answers.show("/v1/recall", body);
  };
  const { form, submit } = controls(run, { shown: false });
  const renderPicked = () => {
    pickedBox.replaceChildren(
      ...(picked.size === 0 ? [h("span", { class: "muted" }, "nothing picked yet")] : []),
      ...[...picked.entries()].map(([id, attrs]) =>
        h("span", { class: "chip", "data-item-id": String(id) }, itemTitle(id, attrs),
          h("button", { type: "button", title: "remove", onclick: () => { picked.delete(id); renderPicked(); submit(); } }, "×")),
      ),
    );
  };
  let timer;
  let seq = 0;
  const search = h("input", { type: "search", placeholder: "search items by title", size: 32, "data-testid": "item-search", autocomplete: "off" });
  const doSearch = async () => {
    const q = search.value.trim();
    const mine = ++seq;
    if (!q) {
      results.replaceChildren();
      return;
    }
    try {
      const data = await api(`/v1/items/search?q=${encodeURIComponent(q)}&limit=20`);
      if (mine !== seq) return;
      clearError();
      results.replaceChildren(
        data.items.length === 0
          ? h("p", { class: "muted" }, `no item matches "${q}"`)
          : table(
              ["item", ""],
              data.items.map((it) => {
                const add = h("button", { type: "button", class: "plain", "data-testid": "pick-item" }, picked.has(it.item_id) ? "added" : "add");
                return h("tr", { "data-item-id": String(it.item_id), class: "pickable", title: "add to the history",
                  onclick: () => {
                    if (picked.has(it.item_id)) return;
                    picked.set(it.item_id, it.attributes);
                    add.textContent = "added";
                    renderPicked();
                    submit();
                  } },
                  h("td", {}, itemTitle(it.item_id, it.attributes), h("div", { class: "attrs" }, `id ${it.item_id} · ${attrText(it.attributes)}`)),
                  h("td", {}, add),
                );
              }),
              { "data-testid": "search-results" },
            ),
      );
    } catch (e) {
      if (mine === seq) showError(e);
    }
  };
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(doSearch, 200);
  });
  renderPicked();
  view.replaceChildren(
    h("h1", {}, "User"),
    userIdForm(""),
    h(
      "div",
      { class: "split" },
      card("New user: pick a history", h("form", { class: "controls", onsubmit: (e) => { e.preventDefault(); doSearch(); } }, search), results, h("h2", { style: "margin-top:.8rem" }, "Picked (oldest first)"), pickedBox),
      card("What this history recalls", form, recBox),
    ),
  );
}
