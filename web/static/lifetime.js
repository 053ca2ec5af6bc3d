// The in-app deletion warning on every page: the caller's instances whose warning window
// has begun (GET /api/v1/lifetime/warnings). The instance page renders its own banner.
(function () {
  const box = document.getElementById("lifetime-banner");
  if (!box) return;
  const page = document.getElementById("instance");
  const here = page ? page.dataset.uid : null;
  const fmt = iso => iso.replace("T", " ").slice(0, 16) + " UTC";
  fetch("/api/v1/lifetime/warnings", { credentials: "same-origin" })
    .then(r => (r.ok ? r.json() : []))
    .then(items => {
      items = items.filter(i => i.uid !== here);
      if (!items.length) return;
      const list = document.createElement("ul");
      for (const i of items) {
        const li = document.createElement("li");
        const a = document.createElement("a");
        a.href = `/instances/${i.uid}`;
        a.textContent = i.name;
        li.append(a, ` will be deleted on ${fmt(i.warning.at)}: ` +
          (i.warning.kind === "lifetime" ? "its lifetime ends." : "it has not been used; connect to it to keep it."));
        list.append(li);
      }
      box.append("Instances about to be deleted:", list);
      box.hidden = false;
    })
    .catch(() => {});
})();
