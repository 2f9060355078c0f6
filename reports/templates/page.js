// The page's one script (plain ES2017, no library, inline: the report opens offline).
// Each part looks for its own elements and does nothing when the page has none of them.
(function () {
  "use strict";

  // A finding named by the URL (#finding-...): open it, and any <details> around it, and show it.
  function openFinding(id) {
    if (!id || id.indexOf("finding-") !== 0) return false;
    const target = document.getElementById(id);
    if (!target) return false;
    for (let el = target; el; el = el.parentElement) {
      if (el.tagName === "DETAILS") el.open = true;
    }
    return target;
  }

  function fromHash() {
    let id = "";
    try {
      id = decodeURIComponent(location.hash.slice(1));
    } catch (e) {
      return; // a malformed %-escape names nothing
    }
    const target = openFinding(id);
    if (target) target.scrollIntoView();
  }

  // A link to a finding opens it even when the URL already names it (no hashchange then).
  document.addEventListener("click", function (event) {
    const link = event.target.closest && event.target.closest('a[href^="#finding-"]');
    if (link) openFinding(link.getAttribute("href").slice(1));
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();

  // The matrix: filters, search and the count; a suite folds.
  const table = document.querySelector("table.matrix");
  if (!table) return;
  const rows = Array.from(table.querySelectorAll("tr.check"));
  const names = rows.map((row) => (row.getAttribute("data-check") || "").toLowerCase());
  const statuses = rows.map((row) => (row.getAttribute("data-statuses") || "").split(" "));
  const groups = Array.from(table.querySelectorAll("tr.suite, tr.feature, tr.check"));
  const buttons = Array.from(document.querySelectorAll("button.filter[data-filter]"));
  const search = document.getElementById("matrix-search");
  const shown = document.getElementById("matrix-shown");
  const FILTERS = {
    all: () => true,
    failures: (i) => statuses[i].includes("failed"),
    deviations: (i) => statuses[i].includes("known-deviation"),
    unexpected: (i) => statuses[i].includes("unexpected-pass"),
    changed: (i) => rows[i].getAttribute("data-changed") === "1",
  };
  let filter = "all";

  function apply() {
    const terms = search ? search.value.toLowerCase().split(/\s+/).filter(Boolean) : [];
    const keep = FILTERS[filter] || FILTERS.all;
    let count = 0;
    rows.forEach((row, i) => {
      const visible = keep(i) && terms.every((t) => names[i].includes(t));
      row.hidden = !visible;
      if (visible) count += 1;
    });
    // A suite or feature row shows while any check under it does.
    let suite = null;
    let feature = null;
    const seen = new Map();
    groups.forEach((row) => {
      if (row.classList.contains("suite")) {
        suite = row;
        feature = null;
        seen.set(row, false);
      } else if (row.classList.contains("feature")) {
        feature = row;
        seen.set(row, false);
      } else if (!row.hidden) {
        if (suite) seen.set(suite, true);
        if (feature) seen.set(feature, true);
      }
    });
    seen.forEach((any, row) => {
      row.hidden = !any;
    });
    if (shown) shown.textContent = count + " of " + rows.length + " checks";
  }

  buttons.forEach((button) => {
    button.addEventListener("click", () => {
      filter = button.getAttribute("data-filter");
      buttons.forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      apply();
    });
  });

  if (search) {
    let timer = 0;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(apply, 150);
    });
    search.addEventListener("search", apply); // Enter, or the clear button
  }

  table.addEventListener("click", (event) => {
    const fold = event.target.closest("button.fold");
    if (!fold) return;
    const body = fold.closest("tbody");
    if (!body) return;
    const folded = body.classList.toggle("folded");
    fold.setAttribute("aria-expanded", String(!folded));
  });

  // A search typed before the script ran (or restored by the browser) counts.
  if (search && search.value) apply();
})();
