"""The FastAPI app of the Retraining UI (`create_app`), which ``plugins/retrain_ui_plugin.py`` mounts at
``/retrain`` on the Airflow API server.

Every route, the static assets included, requires an Airflow login (the JWT of Airflow's auth manager,
as a Bearer header or the ``_token`` cookie of the UI). Reading requires permission to read DAG runs of
``ner_retrain``; the rollback requires permission to trigger ``ner_rollback``. There is no /docs,
/redoc or /openapi.json: every route of the app is one of ours, behind a login.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import (
    GetUserDep,
    get_user,
    requires_access_dag,
    requires_authenticated,
)
from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from retrain.storage import UnsafeKeyError
from retrain_airflow.run_notes import run_note
from retrain_airflow.ui import page_data, proxy, rollback, views
from retrain_airflow.ui.links import RETRAIN_DAG_ID, ROLLBACK_DAG_ID, Links

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {
    "retrain.css": "text/css; charset=utf-8",
    "retrain.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)
SettingsLoader = Callable[[], Any]


@dataclass
class AuthDeps:
    """The dependencies that guard the routes (kept so a unit test can tell which one guards what)."""

    user: Callable[..., Any]  # any logged-in user (static assets)
    read: Callable[..., Any]  # may read ner_retrain DAG runs
    read_path_dag: Callable[..., Any]  # may read runs of the DAG in the path (the DAG-run tab)
    trigger_rollback: Callable[..., Any]  # may trigger ner_rollback


def create_app(settings_loader: SettingsLoader | None = None) -> FastAPI:
    """The FastAPI app of the Retraining UI (mount it at ``URL_PREFIX``); ``settings_loader``: how
    each request reads conf (default `retrain.config.load_settings`)."""
    from retrain.config import load_settings

    load = settings_loader or load_settings
    auth = AuthDeps(
        user=requires_authenticated(),
        read=requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=RETRAIN_DAG_ID),
        read_path_dag=requires_access_dag("GET", DagAccessEntity.RUN),
        trigger_rollback=requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id=ROLLBACK_DAG_ID),
    )
    app = FastAPI(title="Retraining UI", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.auth = auth
    app.state.get_user = get_user
    _add_overview_routes(app, auth, load)
    _add_report_routes(app, auth, load)
    _add_rollback_route(app, auth, load)
    return app


def links_for(request: Request, settings: Any) -> Links:
    """The URLs for the prefix this request reached the app under."""
    return Links(request.scope.get("root_path", ""), settings)


def html_response(text: str, status_code: int = 200) -> HTMLResponse:
    """A page, with the pages' policy: scripts and styles from this app only, not cached."""
    return HTMLResponse(
        text,
        status_code=status_code,
        headers={
            "Content-Security-Policy": PAGE_CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def check_model(model: str) -> None:
    """Refuse a ``model`` parameter that is not a registered model name (400)."""
    if model and not page_data.MODEL_NAME.match(model):
        raise HTTPException(400, f"model: {model[:100]!r} is not a registered model name")


def overview_json_body(overview: page_data.Overview) -> dict[str, Any]:
    """The JSON API's view of the Retraining page."""
    return {
        "runs": [
            {
                "run_id": r.run_id,
                "folder": r.folder,
                "written": r.written.isoformat() if r.written else None,
                "note": run_note(r.summary) if r.summary else None,
                "intake": r.intake_counts,
                "summary": r.summary,
            }
            for r in overview.runs
        ],
        "registry": overview.registry,
        "registry_error": overview.registry_error,
        "s3_error": overview.s3_error,
    }


def _add_overview_routes(app: FastAPI, auth: AuthDeps, load: SettingsLoader) -> None:
    @app.get("/", response_class=HTMLResponse, name="overview", dependencies=[Depends(auth.read)])
    def overview(request: Request, triggered: str = "", paused: int = 0, model: str = "") -> Response:
        check_model(model)
        settings = load()
        data = page_data.read_overview(settings, model or None)
        links = links_for(request, settings)
        return html_response(views.render_overview(data, links, triggered=triggered, paused=bool(paused)))

    @app.get("/api/overview", name="overview_json", dependencies=[Depends(auth.read)])
    def overview_json(model: str = "") -> Response:
        check_model(model)
        return JSONResponse(overview_json_body(page_data.read_overview(load(), model or None)))


def _add_report_routes(app: FastAPI, auth: AuthDeps, load: SettingsLoader) -> None:
    @app.get(
        "/report/{dag_id}/{run_id:path}",
        response_class=HTMLResponse,
        name="run_report",
        dependencies=[Depends(auth.read_path_dag)],
    )
    def run_report(request: Request, dag_id: str, run_id: str) -> Response:
        from retrain.runs import safe_run_id

        settings = load()
        links = links_for(request, settings)
        if dag_id == ROLLBACK_DAG_ID:
            events = page_data.registry_for(settings).history()
            return html_response(views.render_rollback_report(run_id=run_id, events=events, links=links))
        if dag_id != RETRAIN_DAG_ID:
            return html_response(views.render_other_dag(dag_id=dag_id, links=links))
        store = page_data.cached_object_store(settings)
        run = page_data.load_run(store, settings.s3.runs_prefix, safe_run_id(run_id))
        pages = page_data.validation_pages(store, settings.s3.bucket, run.intake)
        return html_response(
            views.render_run_report(
                run=run if (run.summary or run.intake) else None,
                run_id=run_id,
                validation_pages=pages,
                links=links,
            )
        )

    @app.get("/s3/{key:path}", name="s3_object", dependencies=[Depends(auth.read)])
    def s3_object(key: str) -> Response:
        settings = load()
        try:
            proxy.check_report_key(key, proxy.ReportAllowlist.from_settings(settings))
        except UnsafeKeyError as exc:
            raise HTTPException(400, str(exc)) from None
        except PermissionError as exc:
            raise HTTPException(403, str(exc)) from None
        found = proxy.open_report(page_data.cached_object_store(settings), key)
        if found is None:
            raise HTTPException(404, f"no object {key}")
        return StreamingResponse(found.chunks, media_type=found.media_type, headers=found.headers)

    @app.get("/static/{name}", name="static", dependencies=[Depends(auth.user)])
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such asset")
        return Response(
            (STATIC_DIR / name).read_bytes(),
            media_type=STATIC_FILES[name],
            headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"},
        )


def _add_rollback_route(app: FastAPI, auth: AuthDeps, load: SettingsLoader) -> None:
    @app.post("/rollback", name="rollback", dependencies=[Depends(auth.trigger_rollback)])
    def post_rollback(
        request: Request,
        user: GetUserDep,
        target: str = Form(""),
        reason: str = Form(""),
        model: str = Form(""),
        champion: str = Form(""),
    ) -> Response:
        try:
            rollback.same_origin_or_403(request)
            check_model(model)
            plan = rollback.plan_rollback(load(), target, reason, model or None, seen_champion=champion)
            run_id, paused = rollback.trigger_rollback(plan, user.get_name())
        except HTTPException as exc:  # a person posted the form: answer with a page, same status
            links = links_for(request, load())
            return html_response(
                views.render_rollback_refused(detail=exc.detail, links=links), exc.status_code
            )
        url = request.url_for("overview").include_query_params(triggered=run_id, paused=int(paused))
        if model:
            url = url.include_query_params(model=model)
        return RedirectResponse(url.path + "?" + url.query, status_code=303)
