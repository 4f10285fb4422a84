// The recall panel the User, New-user and Item pages share: the controls (k, exclusions,
// JSON filter; kept across navigation), the answer in rank order with only the newest
// request's answer shown, and the user id box.

import { api, clearError, showError } from "./api.js";
import { attrText, h, idPath, itemTitle, loading, num, table } from "./dom.js";

/** Recall options shared by the User, New-user and Item pages (kept across navigation). */
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
export function controls(run, { shown = true } = {}) {
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

/** The user id box of the User and New-user pages: Show opens #/user/<id>. */
export function userIdForm(current) {
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

/** Show recall answers (POST `path` with `body`) in `box`: each ask clears #error and
 * shows "loading…" at once. When requests overlap (the controls changed quickly) only the
 * newest answer is shown; `cancel()` drops those still on their way. */
export function newestAnswer(box) {
  let asked = 0;
  return {
    async show(path, body) {
      const mine = ++asked;
      clearError();
      box.replaceChildren(loading());
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
