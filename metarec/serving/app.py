"""The FastAPI app: POST /recommend, GET /health, POST /reload (bearer token), POST /feedback
and GET /users/{id} (:mod:`.profiles`), docs at /docs.

Requests are validated strictly (JSON types as sent: ``true`` is not a number, ``10.0`` is not
an integer); errors are 422 with the field's location. :mod:`.guard` runs in front of every
request (413 on an oversize body, 503 + Retry-After beyond the bounded queue). Under
`metarec serve` the app is made in each worker process by :func:`app_from_env`, from the
settings the parent put in ``$METAREC_SERVE_RUNTIME``.
"""

# No `from __future__ import annotations`: FastAPI resolves the request models defined
# inside create_app from real annotations.

import dataclasses
import hashlib
import hmac
import json
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

from metarec.config import CatalogConfig, ServeConfig
from metarec.serve import Recommender, RequestError, catalog_options
from metarec.serving.fleet import ModelHolder, ReloadBoard
from metarec.serving.guard import GuardStats, Limits, RequestGuard
from metarec.serving.profiles import Profiles, event_error_detail

log = logging.getLogger(__name__)

TOKEN_ENV = "METAREC_SERVE_TOKEN"
RUNTIME_ENV = "METAREC_SERVE_RUNTIME"
MIN_TOKEN_CHARS = 16


def serve_token(cfg: ServeConfig) -> str | None:
    """The /reload bearer token: ``$METAREC_SERVE_TOKEN``, else ``serve.token``; None when
    neither is set. A short token is refused (guessable)."""
    token = os.environ.get(TOKEN_ENV) or cfg.token or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the serve token (${TOKEN_ENV} or serve.token) has {len(token)} "
                         f"characters; use at least {MIN_TOKEN_CHARS} (e.g. `openssl rand "
                         f"-hex 24`)")
    return token


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison (of digests, so that not even the length leaks)."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(token.encode()).digest())


def create_app(model_uri: str | None = None, cfg: ServeConfig | None = None,
               tracking_uri: str | None = None, board: ReloadBoard | None = None,
               catalog: CatalogConfig | None = None, profiles: Profiles | None = None) -> Any:
    """The app serving ``model_uri`` (default ``cfg.model_uri``), loaded at start and on
    POST /reload; with a ``board`` (one per `metarec serve`) a reload reaches every worker.
    ``catalog``: the catalog store and how often to look for a newer version (default: the
    ``catalog`` section's defaults). ``profiles``: the event store settings of /feedback and
    profiles (default: params.yaml's defaults). Write endpoints (/feedback) need the bearer
    token when one is configured."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, ConfigDict, Field

    cfg = cfg or ServeConfig()
    profiles = profiles or Profiles()
    uri = model_uri or cfg.model_uri
    token = serve_token(cfg)
    limits = Limits(cfg.max_body_bytes, cfg.max_active, cfg.max_queue, cfg.retry_after_s,
                    cfg.body_timeout_s)
    stats = GuardStats()
    catalog = catalog or CatalogConfig()
    holder = ModelHolder(lambda: Recommender.load(uri, tracking_uri=tracking_uri,
                                                  threads=cfg.threads,
                                                  max_ratings=cfg.max_ratings,
                                                  catalog_dir=catalog.dir,
                                                  **catalog_options(catalog)),
                         board, poll_s=cfg.reload_poll_s, refresh_s=catalog.poll_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        holder.start()
        try:
            yield
        finally:
            holder.stop()

    app = FastAPI(title="metarec", version="1",
                  description="Cold-start recommendations: send a few ratings, get the top k.",
                  lifespan=lifespan)
    app.add_middleware(RequestGuard, limits=limits, stats=stats)

    Scalar = str | int | float | bool | None

    class RecommendRequest(BaseModel):
        # strict: JSON types as sent (a bool is not a number, 4.0 is not an integer)
        model_config = ConfigDict(extra="forbid", strict=True)
        user: dict[str, Scalar] | None = Field(
            None, description="User attributes by feature name (absent ones: unknown).",
            examples=[{"age": 25, "gender": "F", "occupation": "student"}])
        ratings: dict[str, float] = Field(
            default_factory=dict, max_length=cfg.max_ratings,
            description="Ratings (numbers) by item id.", examples=[{"50": 5, "172": 4}])
        k: int = Field(10, ge=1, le=cfg.max_k, description="How many items to return.")
        exclude_seen: bool = Field(True, description="Leave out the items rated in the request.")
        user_id: int | None = Field(
            None, ge=-(2**63), le=2**63 - 1,
            description="A user whose stored ratings (POST /feedback) join the request's: the "
                        "newest up to serve.max_ratings; the request's rating wins per item.")

    class Item(BaseModel):
        item_id: int
        title: str | None
        score: float

    class RecommendResponse(BaseModel):
        model: str
        items: list[Item]
        profile: dict[str, Any] | None = None

    class FeedbackRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        events: list[dict[str, Any]] = Field(
            ..., description="Rating events: event_id, user_id, item_id, rating, timestamp "
                             "(Unix seconds or ISO 8601; default now), user_features.",
            examples=[[{"event_id": "5f1c...", "user_id": 7001, "item_id": 50, "rating": 5,
                        "timestamp": 1700000000, "user_features": {"age": 25}}]])

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the input, which may hold NaN/inf: not JSON. Keep it plain.
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg")),
                   "type": str(e.get("type"))} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": errors})

    bearer = HTTPBearer(auto_error=False, description="serve.token / $METAREC_SERVE_TOKEN")

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            raise HTTPException(403, f"reload is disabled: no token is configured (set "
                                     f"${TOKEN_ENV} or serve.token)")
        if creds is None or not token_matches(creds.credentials, token):
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    def writer(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """Write endpoints: open without a configured token (then `metarec serve` binds only
        loopback), else the bearer token is required."""
        if token is not None and (creds is None or not token_matches(creds.credentials, token)):
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    def health() -> dict[str, Any]:
        if holder.model is None:
            raise HTTPException(503, "no model loaded")
        return {"status": "ok", **holder.model.info(), "pid": os.getpid(),
                "generation": holder.generation, "guard": stats.to_dict()}

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(req: RecommendRequest) -> dict[str, Any]:
        rec = holder.model
        ratings, user, note = req.ratings, req.user, None
        if req.user_id is not None:
            ratings, user, note = profiles.support(req.user_id, req.ratings, req.user,
                                                   rec.row_of, cfg.max_ratings, rec.user_fields)
        items = rec.recommend(user, ratings, k=req.k, exclude_seen=req.exclude_seen)
        return {"model": rec.source, "items": [i.to_dict() for i in items], "profile": note}

    @app.post("/feedback", dependencies=[Depends(writer)])
    def feedback(req: FeedbackRequest) -> dict[str, Any]:
        from metarec.feedback.events import EventError
        from metarec.feedback.store import StoreError

        try:
            return profiles.add(req.events)
        except EventError as exc:
            return JSONResponse(status_code=422, content={"detail": event_error_detail(exc)})
        except StoreError as exc:
            raise HTTPException(503, f"event store unavailable: {exc}") from None

    @app.get("/users/{user_id}")
    def user_profile(user_id: int) -> dict[str, Any]:
        return profiles.profile(user_id, cfg.max_ratings)

    @app.post("/reload", dependencies=[Depends(authorized)])
    def reload() -> dict[str, Any]:
        try:
            generation = holder.reload()
        except Exception as exc:  # keep serving the old model; say why the new one failed
            log.exception("reload of %s failed", uri)
            raise HTTPException(503, f"reload failed, still serving the previous model: "
                                     f"{type(exc).__name__}: {exc}") from None
        out = {"status": "reloaded", "generation": generation, **holder.model.info()}
        if board is None:
            return out
        workers = board.wait(generation, cfg.reload_timeout_s)
        behind = [w for w in workers if w["generation"] < generation or w.get("error")]
        if behind or len(workers) < board.workers:
            raise HTTPException(503, {"msg": f"reloaded here, but not every worker confirmed "
                                             f"generation {generation} within "
                                             f"{cfg.reload_timeout_s} s", "workers": workers})
        return {**out, "workers": workers}

    return app


def runtime_env(model_uri: str, cfg: ServeConfig, tracking_uri: str | None,
                state_dir: str, workers: int, catalog: CatalogConfig | None = None,
                profiles: Profiles | None = None) -> str:
    """What :func:`app_from_env` needs, as the JSON the parent puts in ``$METAREC_SERVE_RUNTIME``
    for its workers (an environment only the same user can read; ``$METAREC_SERVE_TOKEN``,
    when set, is inherited and wins as in the parent)."""
    return json.dumps({"model_uri": model_uri, "tracking_uri": tracking_uri,
                       "serve": dataclasses.asdict(cfg), "state_dir": state_dir,
                       "workers": workers,
                       "catalog": dataclasses.asdict(catalog or CatalogConfig()),
                       "feedback": dataclasses.asdict((profiles or Profiles()).feedback),
                       "validation": dataclasses.asdict((profiles or Profiles()).validation)})


def app_from_env() -> Any:
    """uvicorn's app factory in each worker process (``metarec.serving.app:app_from_env``)."""
    raw = os.environ.get(RUNTIME_ENV)
    if not raw:
        raise RuntimeError(f"${RUNTIME_ENV} is not set: start the server with `metarec serve`")
    spec = json.loads(raw)
    from metarec.config import config_from_dict

    cfg = ServeConfig(**spec["serve"])
    own = config_from_dict({"feedback": spec.get("feedback", {}),
                            "validation": spec.get("validation", {})}, RUNTIME_ENV)
    return create_app(spec["model_uri"], cfg, spec["tracking_uri"],
                      board=ReloadBoard(spec["state_dir"], spec["workers"]),
                      catalog=CatalogConfig(**spec.get("catalog", {})),
                      profiles=Profiles(own.feedback, own.validation))
