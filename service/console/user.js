// User pages: #/user/<id> (history and recall with controls), #/user (new-user builder:
// search items, pick a history) and #/item/<id> (similar items).

import { api, clearError, showError } from "./api.js";
import { attrText, card, h, idPath, itemTitle, loading, num, parseId, table, when } from "./dom.js";

const view = document.getElementById("view");

/** Recall options shared by the User page and the builder (kept across navigation). */
const options = { k: 20, exclude_seen: true, exclude_shown: false, filterText: "" };

let attributesText = null; // the bundle's item attributes as "name (kind), ...", once per page load

/** The served bundle's item attributes for the filter box's hint ("" when unknown). */
function attributeNames() {
  attributesText ??= api("/v1/model").then(
    (m) => (m.item_attributes?.length ? `attributes: ${m.item_attributes.map((a) => `${a.name} (${a.kind})`).join(", ")}` : "this bundle has no item attributes"),
    () => "",
  );
  return attributesText;
}

/** The controls form; `run` is called with the request's options when they change. */
function controls(run, { shown = true } = {}) {
  const hint = h("div", { class: "hint", "data-testid": "filter-error" });
  const area = h("textarea", {
    rows: 2,
    cols: 42,
    placeholder: 'none; e.g. {"<attribute>": {"any": ["<value>"]}}',
    value: options.filterText,
    "data-testid": "filter-input",
  });
  const kInput = h("input", { type: "number", min: 1, max: 1000, value: options.k, style: "width:5.5em", "data-testid": "k-input" });
  const seen = h("input", { type: "checkbox", checked: options.exclude_seen, "data-testid": "exclude-seen" });
  const shownBox = h("input", { type: "checkbox", checked: options.exclude_shown, "data-testid": "exclude-shown" });
  const submit = () => {
    options.k = Number(kInput.value);
    options.exclude_seen = seen.checked;
    options.exclude_shown = shownBox.checked;
    options.filterText = area.value;
    let filter;
    hint.textContent = "";
    area.classList.remove("bad");
    if (area.value.trim()) {
      try {
        filter = JSON.parse(area.value);
      } catch (e) {
        hint.textContent = `filter is not valid JSON: ${e.message}`;
        area.classList.add("bad");
        return;
      }
    }
    run({ k: options.k, exclude_seen: options.exclude_seen, exclude_shown: options.exclude_shown, filter });
  };
  const known = h("div", { class: "attrs" });
  attributeNames().then((text) => { known.textContent = text; });
  const form = h(
    "form",
    { class: "controls", onsubmit: (e) => { e.preventDefault(); submit(); } },
    h("label", {}, "k", kInput),
    h("label", { class: "check" }, seen, "exclude seen"),
    shown ? h("label", { class: "check" }, shownBox, "exclude shown") : null,
    h("label", {}, "filter (JSON, on item attributes)", area, known, hint),
    h("button", { type: "submit", "data-testid": "recall-button" }, "Recall"),
  );
  for (const el of [kInput, seen, shownBox]) el.addEventListener("change", submit);
  return { form, submit };
}

function userIdForm(current) {
  const input = h("input", { type: "text", value: current ?? "", placeholder: "user id, e.g. 196", size: 16, "data-testid": "user-id-input", autocomplete: "off" });
  return h(
    "form",
    {
      class: "controls",
      onsubmit: (e) => {
        e.preventDefault();
        const v = input.value.trim();
        if (v) location.hash = `#/user/${encodeURIComponent(v)}`;
      },
    },
    h("label", {}, "user id", input),
    h("button", { type: "submit", "data-testid": "user-go" }, "Show"),
  );
}

/** Rows of recalled items in rank order, each linking to its similar items. */
function itemRows(items) {
  return items.map((it, i) =>
    h(
      "tr",
      { "data-item-id": String(it.item_id) },
      h("td", { class: "num" }, i + 1),
      h("td", {}, h("a", { href: `#/item/${idPath(it.item_id)}`, "data-testid": "similar-link", title: "similar items" }, itemTitle(it.item_id, it.attributes)),
        h("div", { class: "attrs" }, `id ${it.item_id}`, it.attributes ? ` · ${attrText(it.attributes)}` : "")),
      h("td", { class: "num" }, num(it.score, 4)),
    ),
  );
}

function recalledTable(answer) {
  return h(
    "div",
    {},
    h("p", { class: "muted" }, `source: ${answer.source}`, answer.fresh_events ? `, ${answer.fresh_events} fresh events` : "", `, ${answer.items.length} items, bundle ${answer.bundle_id}`),
    table(["#", "item", "score "], itemRows(answer.items), { "data-testid": "recalled-items" }),
  );
}

function historyTable(hist) {
  const rows = [
    ...(hist.fresh_events ?? []).map((e) => ({ ...e, fresh: true })),
    ...(hist.history ?? []).map((e) => ({ ...e, fresh: false })),
  ];
  return table(
    ["time", "item"],
    rows.map((e) =>
      h(
        "tr",
        { "data-item-id": String(e.item_id), class: e.fresh ? "fresh" : "" },
        h("td", { class: "time" }, when(e.timestamp), e.fresh ? h("span", { class: "badge", "data-testid": "fresh-badge" }, "fresh") : null),
        h("td", {}, h("a", { href: `#/item/${idPath(e.item_id)}`, "data-testid": "similar-link" }, itemTitle(e.item_id, e.attributes)),
          h("div", { class: "attrs" }, `id ${e.item_id}`, e.attributes ? ` · ${attrText(e.attributes)}` : "")),
      ),
    ),
    { "data-testid": "user-history" },
  );
}

/** Show recall answers (POST `path` with `body`) in `box`. When requests overlap (the
 * controls changed quickly) only the newest answer is shown; `cancel()` drops those still
 * on their way. */
function newestAnswer(box) {
  let asked = 0;
  return {
    async show(path, body) {
      const mine = ++asked;
      try {
        const answer = await api(path, body);
        if (mine === asked) box.replaceChildren(recalledTable(answer));
      } catch (e) {
        if (mine !== asked) return;
        box.replaceChildren(h("p", { class: "muted" }, "no answer"));
        showError(e);
      }
    },
    cancel() {
      asked += 1;
    },
  };
}

export async function userPage(rawId) {
  const id = parseId(rawId);
  const histBox = h("div", {}, h("p", { class: "muted" }, "loading…"));
  const recBox = h("div", {}, h("p", { class: "muted" }, "loading…"));
  const answers = newestAnswer(recBox);
  const run = async (opts) => {
    clearError();
    recBox.replaceChildren(loading());
    const body = { user_id: id, k: opts.k, exclude_seen: opts.exclude_seen, exclude_shown: opts.exclude_shown, with_attributes: true };
    if (opts.filter !== undefined) body.filter = opts.filter;
    await answers.show("/v1/recall", body);
  };
  const { form, submit } = controls(run);
  view.replaceChildren(
    h("h1", {}, "User ", h("code", {}, String(id))),
    userIdForm(String(id)),
    h("div", { class: "split" }, card("History (newest first)", histBox), card("Recalled items", form, recBox)),
  );
  const hist = api(`/v1/users/${idPath(id)}/history?limit=50`).then(
    (data) => {
      const note = [];
      if (!data.known) note.push("not in the bundle: known from events only");
      if (data.fresh === false) note.push("the state store could not be read: fresh events missing");
      histBox.replaceChildren(
        h("p", { class: "muted" }, `${data.history.length} training items, ${data.fresh_events.length} fresh events`, note.length ? ` (${note.join("; ")})` : ""),
        historyTable(data),
      );
    },
    (e) => {
      histBox.replaceChildren(h("p", { class: "muted" }, "no history"));
      throw e;
    },
  );
  submit();
  await hist;
}

export async function builderPage() {
  const picked = new Map(); // item id -> attributes
  const pickedBox = h("div", { class: "chips", "data-testid": "picked-items" });
  const results = h("div", {});
  const recBox = h("div", {}, h("p", { class: "muted" }, "Pick a few items to see what a user with that history gets."));
  const answers = newestAnswer(recBox);
  const run = async (opts) => {
    clearError();
    recBox.replaceChildren(loading());
    if (picked.size === 0) {
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
  const search = h("input", {
    type: "search",
    placeholder: "search items by title",
    size: 32,
    "data-testid": "item-search",
    autocomplete: "off",
    oninput: () => {
      clearTimeout(timer);
      timer = setTimeout(doSearch, 200);
    },
  });
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

export async function itemPage(rawId) {
  const id = parseId(rawId);
  const recBox = h("div", {}, h("p", { class: "muted" }, "loading…"));
  const about = h("p", { class: "muted" }, "");
  const answers = newestAnswer(recBox);
  const run = async (opts) => {
    clearError();
    recBox.replaceChildren(loading());
    const body = { k: opts.k, with_attributes: true };
    if (opts.filter !== undefined) body.filter = opts.filter;
    await answers.show(`/v1/items/${idPath(id)}/similar`, body);
  };
  const { form, submit } = controls(run, { shown: false });
  form.querySelector("[data-testid=exclude-seen]").closest("label").remove();
  view.replaceChildren(h("h1", {}, "Similar items to ", h("code", {}, String(id))), about, h("div", { style: "max-width: 900px" }, card("Nearest items by item vector (POST /v1/items/{id}/similar)", form, recBox)));
  api(`/v1/items/${idPath(id)}`).then(
    (item) => about.replaceChildren(h("b", {}, itemTitle(item.id, item.attributes)), ` · ${attrText(item.attributes)}`),
    () => {},
  );
  submit();
}

