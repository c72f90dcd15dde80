// Retraining UI. Airflow shows plugin pages in an iframe sandboxed with "allow-scripts
// allow-same-origin allow-forms allow-downloads": links with target=_top or _blank do nothing there,
// and confirm() is blocked. Links marked data-nav="top" (Airflow pages) or "tab" (reports) are
// followed through the parent document, which is same-origin; outside an iframe they work as is.
document.addEventListener("click", (event) => {
  const a = event.target.closest("a[data-nav]");
  if (!a || event.defaultPrevented || event.button !== 0 || window.top === window) return;
  let host;
  try {
    host = window.top.document;
  } catch (e) {
    return; // framed by another origin: leave the link alone
  }
  event.preventDefault();
  const link = host.createElement("a");
  link.href = a.href;
  if (a.dataset.nav === "tab") {
    link.target = "_blank";
    link.rel = "noopener";
  }
  host.body.appendChild(link);
  link.click();
  link.remove();
});
