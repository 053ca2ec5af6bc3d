"""What a hostile owner can put in their own session, for the tests that attack through it.

* :func:`install_hostile_server` - from the kernel (code the owner runs), a JupyterLab
  configuration file that loads a server extension of the owner's; after a reboot (an
  owner's right) the session's server answers ``<base>hostile/...`` itself: it echoes the
  request headers it received (HTTP and WebSocket), sets cookies named like Atrium's,
  grants CORS, widens service-worker scopes and asks to clear site data. That is what
  replacing the server process achieves, through the product's own paths.
* :func:`save_trusted_notebook` - a notebook whose (trusted, signed) output runs
  JavaScript, as when the owner runs a cell and saves.
* :data:`ATTACK_JS` - what that JavaScript tries against the portal; it writes what it
  could reach into ``#attack-result`` as JSON.
"""

from __future__ import annotations

import json

from tests.conftest import AtriumServer
from tests.sessions import run_code

EXTENSION = r'''
import json
import tornado.web, tornado.websocket
from jupyter_server.utils import url_path_join

class Echo(tornado.web.RequestHandler):
    def prepare(self):
        self.set_header("Set-Cookie", "atrium_session=planted-by-session; Path=/")
        self.add_header("Set-Cookie", "atrium_instance=planted; Path=/")
        self.set_header("Service-Worker-Allowed", "/")
        self.set_header("Clear-Site-Data", '"cookies", "storage"')
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Allow-Credentials", "true")
        self.set_header("X-Hostile", "yes")
    def check_xsrf_cookie(self):
        pass
    def get(self, what):
        if what == "sw.js":
            self.set_header("Content-Type", "application/javascript")
            self.finish("self.addEventListener('fetch', () => {});")
        elif what == "page":
            self.set_header("Content-Type", "text/html")
            self.finish(PAGE)
        else:
            self.finish({"headers": list(self.request.headers.get_all()),
                         "uri": self.request.uri})
    post = get

class EchoSocket(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True
    def open(self):
        self.write_message(json.dumps({"headers": list(self.request.headers.get_all())}))

def _load_jupyter_server_extension(app):
    base = app.web_app.settings["base_url"]
    app.web_app.add_handlers(".*$", [
        (url_path_join(base, "hostile/ws"), EchoSocket),
        (url_path_join(base, "hostile/(.*)"), Echo)])
'''

ATTACK_JS = r"""
(async () => {
  const portal = PORTAL;
  const out = {};
  async function attempt(name, f) {
    try { out[name] = await f(); } catch (e) { out[name] = "blocked: " + e.name; }
  }
  await attempt("read_me", async () => {
    const r = await fetch(portal + "/api/v1/me", { credentials: "include" });
    return "read " + r.status + " " + (await r.text()).slice(0, 200);
  });
  await attempt("mint_token", async () => {
    const r = await fetch(portal + "/api/v1/tokens", { method: "POST", credentials: "include",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: "stolen" }) });
    return "read " + r.status + " " + (await r.text()).slice(0, 200);
  });
  await attempt("mint_token_blind", async () => {
    const r = await fetch(portal + "/api/v1/tokens", { method: "POST", mode: "no-cors",
      credentials: "include", headers: { "Content-Type": "text/plain" },
      body: JSON.stringify({ name: "stolen-blind" }) });
    return "sent, answer " + r.type;
  });
  await attempt("same_host_api", async () => {
    const r = await fetch("/api/v1/me", { credentials: "include" });
    return "status " + r.status;
  });
  await attempt("set_cookie", async () => {
    document.cookie = "atrium_session=planted-by-js; path=/";
    document.cookie = "atrium_session=planted-by-js; path=/; domain=localhost";
    document.cookie = "atrium_session=planted-by-js; path=/; domain=sessions.localhost";
    return "cookies here: " + document.cookie;
  });
  if (SERVICE_WORKER) {
    await attempt("service_worker_root", async () => {
      const reg = await navigator.serviceWorker.register("sw.js", { scope: "/" });
      return "registered " + reg.scope;
    });
  }
  const box = document.getElementById("attack-result");
  box.textContent = JSON.stringify(out);
  box.dataset.done = "1";
})();
"""


def attack_js(server: AtriumServer, service_worker: bool = False) -> str:
    return ATTACK_JS.replace("PORTAL", json.dumps(server.url)).replace(
        "SERVICE_WORKER", "true" if service_worker else "false")


def hostile_page(server: AtriumServer) -> str:
    return ("<!doctype html><html><body><pre id='attack-result'></pre><script>"
            + attack_js(server, service_worker=True) + "</script></body></html>")


async def install_hostile_server(server: AtriumServer, uid: str, token: str) -> None:
    """Run as the owner, in the session's kernel: the next start loads the extension."""
    config = "\n".join((
        "import sys, types",
        'module = types.ModuleType("atrium_hostile")',
        f"exec({EXTENSION!r}, module.__dict__)",
        f"module.PAGE = {hostile_page(server)!r}",
        'sys.modules["atrium_hostile"] = module',
        'c.ServerApp.jpserver_extensions = {"atrium_hostile": True}', ""))
    code = f"""
import os, pathlib
conf = pathlib.Path(os.environ["JUPYTER_CONFIG_DIR"])
conf.mkdir(parents=True, exist_ok=True)
(conf / "jupyter_server_config.py").write_text({config!r})
print("installed")
"""
    assert await run_code(server.url, uid, token, code) == "installed"


async def save_trusted_notebook(server: AtriumServer, uid: str, token: str,
                                name: str) -> None:
    """A notebook whose saved output is HTML with a script, signed by the session's notary
    (as JupyterLab signs what its owner ran), so JupyterLab renders it trusted."""
    html = "<pre id='attack-result'></pre><script>" + attack_js(server) + "</script>"
    code = f"""
import os, nbformat
from nbformat.sign import NotebookNotary
nb = nbformat.v4.new_notebook()
cell = nbformat.v4.new_code_cell("display(HTML(...))")
cell.outputs = [nbformat.v4.new_output("display_data", data={{"text/html": {html!r}}})]
nb.cells = [cell]
NotebookNotary().sign(nb)
nbformat.write(nb, os.path.join(os.getcwd(), {name!r}))
print("saved")
"""
    assert await run_code(server.url, uid, token, code) == "saved"
