"""Handler bases: authentication for every request, errors as pages or as JSON."""

from __future__ import annotations

import json
from typing import Any

import tornado.web
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.errors import RequestError
from orchestrator.models import User
from orchestrator.paging import Page
from sharing.policy import Principal
from web.auth import SESSION_COOKIE, bearer_token
from web.headers import set_page_headers
from web.portal import Portal
from web.session_auth import entry_url, request_principal


class BaseHandler(tornado.web.RequestHandler):
    principal: Principal | None = None

    @property
    def portal(self) -> Portal:
        portal: Portal = self.application.settings["portal"]
        return portal

    async def prepare(self) -> None:
        self.principal = await request_principal(self)

    def set_default_headers(self) -> None:
        set_page_headers(self)

    def get_login_url(self) -> str:
        return entry_url(self)  # the login page, or the ticket flow on an instance's host

    def get_current_user(self) -> Principal | None:
        return self.principal

    async def load_user(self, session: AsyncSession) -> User:
        if self.principal is None:
            raise RequestError("authentication required", 401)
        user = await session.get(User, self.principal.user_id)
        if user is None:
            raise RequestError("your account no longer exists", 401)
        return user

    def page_args(self) -> Page:
        """The slice of a list a page shows; a bad ``limit``/``offset`` is a 400."""
        return Page.of({k: self.get_argument(k) for k in ("limit", "offset")
                        if k in self.request.arguments})

    def pager(self, page: Page, total: int, shown: int) -> dict[str, Any]:
        others = {k: self.get_argument(k) for k in self.request.arguments
                  if k not in ("limit", "offset") and self.get_argument(k, "")}
        return page.pager(self.request.path, others, total, shown)

    def render_page(self, template: str, **context: Any) -> None:
        page = self.portal.templates.get_template(template)
        self.finish(page.render(
            principal=self.principal, xsrf_form_html=self.xsrf_form_html,
            demo_mode=self.portal.settings.demo_mode, request=self.request, **context))

    def error_response(self, status: int, message: str) -> None:
        self.render_page("error.html", status=status, message=message)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.error_response(status_code, message)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, RequestError):
            super().log_exception(typ, value, tb)

    def _handle_request_exception(self, e: BaseException) -> None:
        if not isinstance(e, RequestError):
            super()._handle_request_exception(e)
            return
        if self._finished:
            return
        self.clear()
        self.set_status(e.status)
        self.error_response(e.status, e.message)


class ApiHandler(BaseHandler):
    """JSON in, JSON out; errors as ``{"error": {"status": N, "message": "..."}}``."""

    def check_xsrf_cookie(self) -> None:
        # Browsers never add a bearer token on their own, so such calls cannot be forged
        # cross-site; cookie-authenticated calls (the pages' scripts) carry the XSRF token.
        # A call with neither is anonymous and answered 401 by the handler.
        if bearer_token(self) is None and self.get_cookie(SESSION_COOKIE) is not None:
            super().check_xsrf_cookie()

    def require_user(self) -> Principal:
        if self.principal is None:
            raise RequestError("authentication required: log in or send a bearer token", 401)
        return self.principal

    def json_body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(f"the request body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def send(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(data, default=str))

    def page(self) -> Page:
        """The slice of a list asked for (``limit``, ``offset``); a bad value is a 400."""
        return self.page_args()

    def send_page(self, items: list[Any], total: int, page: Page) -> None:
        """One page of a list: the items as a JSON array, the rest in headers."""
        self.set_header("X-Total-Count", str(total))
        others = {k: self.get_argument(k) for k in self.request.arguments
                  if k not in ("limit", "offset")}
        link = page.links(self.request.path, others, total)
        if link:
            self.set_header("Link", link)
        self.send(items)

    def send_list(self, items: list[Any]) -> None:
        """A list held in memory (short by nature: a user's plans, an instance's members),
        paged like the others."""
        page = self.page()
        self.send_page(page.slice(items), len(items), page)

    def error_response(self, status: int, message: str) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": {"status": status, "message": message}}))


class NotFoundApi(ApiHandler):
    async def prepare(self) -> None:
        raise RequestError(f"no such API endpoint: {self.request.path}", 404)


class NotFoundPage(BaseHandler):
    """Any path no route matches (a page, with the page headers)."""

    async def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "no such page")
