// User page (#/user/<id>): a user's history (fresh events first) beside what
// POST /v1/recall answers for them, with the recall controls.

import { api } from "./api.js";
import { attrText, card, h, idPath, itemTitle, loading, parseId, table, when } from "./dom.js";
import { controls, newestAnswer, userIdForm } from "./recall-panel.js";

const view = document.getElementById("view");

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

/** Renders #/user/<rawId> in #view; resolves once the history is shown (or throws its error). */
export async function userPage(rawId) {
  const id = parseId(rawId);
  const histBox = h("div", {}, loading());
  const recBox = h("div", {}, loading());
  const answers = newestAnswer(recBox);
  const run = async (opts) => {
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
