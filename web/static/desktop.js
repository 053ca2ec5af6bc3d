// The desktop page: noVNC's client on the bridge, clipboard, keyboard layout and scaling.
import RFB from "/novnc/core/rfb.js";
const screen = document.getElementById("screen");
const viewOnly = screen.dataset.viewOnly === "true";
const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/instances/${screen.dataset.uid}/desktop/websockify`;
const state = document.getElementById("desktop-state");
const scaling = document.getElementById("scaling");
let rfb = null, retry = 1000, connected;
const rfbReady = new Promise(ok => { connected = ok; });
function setState(name, text) { state.dataset.state = name; state.textContent = text; }
function applyScaling() {
  if (!rfb) return;
  rfb.resizeSession = !viewOnly && scaling.value === "resize";
  rfb.scaleViewport = scaling.value === "scale" || (viewOnly && scaling.value === "resize");
}
function connect() {
  rfb = new RFB(screen, url, { shared: true, wsProtocols: ["binary"] });
  rfb.viewOnly = viewOnly;
  rfb.focusOnClick = true;
  applyScaling();
  rfb.addEventListener("connect", () => { setState("connected", "Connected"); retry = 1000; rfb.focus(); connected(); });
  rfb.addEventListener("disconnect", (e) => {
    setState("disconnected", `Disconnected${e.detail.clean ? "" : " unexpectedly"}; reconnecting…`);
    setTimeout(connect, retry); retry = Math.min(retry * 2, 15000);   // automatic reconnect
  });
  rfb.addEventListener("clipboard", (e) => { document.getElementById("clipboard-text").value = e.detail.text; });
  rfb.addEventListener("desktopname", (e) => { document.title = `${e.detail.name} · Atrium`; });
}
scaling.addEventListener("change", applyScaling);
const toggle = document.getElementById("clipboard-toggle");
if (toggle) toggle.addEventListener("click", () => { const c = document.getElementById("clipboard"); c.hidden = !c.hidden; });
const send = document.getElementById("clipboard-send");
if (send) send.addEventListener("click", () => rfb && rfb.clipboardPasteFrom(document.getElementById("clipboard-text").value));
const cad = document.getElementById("ctrl-alt-del");
if (cad) cad.addEventListener("click", () => rfb && rfb.sendCtrlAltDel());
const layout = document.getElementById("layout");
if (layout) {
  const saved = localStorage.getItem("atrium-keyboard");
  const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || "";
  async function setLayout(code) {
    const r = await fetch(screen.dataset.keyboardUrl, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-XSRFToken": decodeURIComponent(xsrf) },
      body: JSON.stringify({ layout: code }) });
    if (r.ok) localStorage.setItem("atrium-keyboard", code);
    else setState("error", (await r.json()).error.message);
  }
  if (saved) layout.value = saved;
  layout.addEventListener("change", () => setLayout(layout.value));
  rfbReady.then(() => { if (saved) setLayout(saved); });
}
connect();
