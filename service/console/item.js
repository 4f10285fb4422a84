// Item page (#/item/<id>): the item and its nearest items by item vector
// (POST /v1/items/{id}/similar), with the recall controls less the user-only ones.

import { api } from "./api.js";
import { attrText, card, h, idPath, itemTitle, loading, parseId } from "./dom.js";
import { controls, newestAnswer } from "./recall-panel.js";

const view = document.getElementById("view");

/** Renders #/item/<rawId> in #view; the item's own attributes arrive when they do. */
export async function itemPage(rawId) {
  const id = parseId(rawId);
  const recBox = h("div", {}, loading());
  const about = h("p", { class: "muted" }, "");
  const answers = newestAnswer(recBox);
  const run = async (opts) => {
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
