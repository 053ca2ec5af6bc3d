// Live status on the instance page and the dashboard: polls the REST API (cookie auth).
(function () {
  const SETTLED = new Set(["ACTIVE", "STOPPED", "ERROR", "DELETED", "PARTIALLY_ACTIVE",
                             "UNAVAILABLE"]);
  // When the observed status has reached what was asked for (as in the reconciler).
  const AT_REST = {
    RUNNING: new Set(["ACTIVE", "PARTIALLY_ACTIVE", "ERROR"]),
    STOPPED: new Set(["STOPPED", "ERROR"]),
    DELETED: new Set(["DELETED"]),
  };
  async function poll(uid, apply) {
    for (;;) {
      let data;
      try {
        const r = await fetch(`/api/v1/instances/${uid}`, { credentials: "same-origin" });
        if (r.status === 404) { apply({ status: "DELETED", progress: "", reason: "" }); return; }
        data = await r.json();
      } catch (e) { await new Promise(ok => setTimeout(ok, 2000)); continue; }
      apply(data);
      if ((AT_REST[data.target] || SETTLED).has(data.status)) return;
      await new Promise(ok => setTimeout(ok, 700));
    }
  }
  function render(root, data) {
    const s = root.querySelector("[data-status]");
    if (s) { s.textContent = data.status; s.className = `status s-${data.status}`; }
    const p = root.querySelector("[data-progress]"); if (p) p.textContent = data.progress || "";
    const r = root.querySelector("[data-reason]"); if (r) { r.textContent = data.reason || ""; r.hidden = !data.reason; }
    const sp = root.querySelector("[data-spinner]"); if (sp) sp.hidden = SETTLED.has(data.status);
    const ready = new Set(data.ready_protocols || []);
    const lab = root.querySelector("[data-open-lab]"); if (lab) lab.hidden = !ready.has("jupyter");
    const desk = root.querySelector("[data-open-desktop]"); if (desk) desk.hidden = !ready.has("desktop");
    root.querySelectorAll("[data-protocol]").forEach(el => {
      el.className = `proto ${ready.has(el.dataset.protocol) ? "up" : "down"}`;
    });
  }
  const page = document.getElementById("instance");
  if (page) poll(page.dataset.uid, d => render(page, d));
  document.querySelectorAll("#instances tr[data-uid]").forEach(row => {
    const s = row.querySelector("[data-status]");
    if (s && !SETTLED.has(s.textContent.trim())) poll(row.dataset.uid, d => {
      render(row, d);
      if ((AT_REST[d.target] || SETTLED).has(d.status)) location.reload();
    });
  });
})();

// The owner sees new access requests appear on the instance page without reloading.
(function () {
  const box = document.getElementById("access-requests");
  if (!box) return;
  const shown = new Set([...box.querySelectorAll("[data-request]")].map(li => li.dataset.request));
  setInterval(async () => {
    try {
      const r = await fetch(`/api/v1/instances/${box.dataset.uid}/access-requests`, { credentials: "same-origin" });
      if (!r.ok) return;
      const ids = (await r.json()).map(req => String(req.id));
      if (ids.length !== shown.size || ids.some(id => !shown.has(id))) location.reload();
    } catch (e) { /* offline for a moment: try again next tick */ }
  }, 4000);
})();

// Behaviour the templates declare with data attributes (the pages allow no inline script).
(function () {
  document.addEventListener("click", (e) => {
    const ask = e.target.closest("[data-confirm]");
    if (ask && !confirm(ask.dataset.confirm)) e.preventDefault();
    const select = e.target.closest("[data-select-on-click]");
    if (select) select.select();
  });
  document.addEventListener("change", (e) => {
    if (e.target.matches("[data-autosubmit]")) e.target.form.submit();
  });
  // A pending access request: the owner's answer appears without reloading by hand.
  if (document.querySelector('[data-request-status="PENDING"]')) setTimeout(() => location.reload(), 3000);
})();
