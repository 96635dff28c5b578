//! The inference service (port 5002): model servers as `model@.service` instances.

use crate::http::{self, Method, Request, Response, RouteMatch, Service};
use serde_json::json;

pub const SERVICE_NAME: &str = "Inference Model Service";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    Index,
    Health,
}

const ROUTES: &[(Method, &str, Route)] = &[
    (Method::Get, "/", Route::Index),
    (Method::Get, "/health", Route::Health),
];

pub struct InferenceService;

impl Service for InferenceService {
    fn name(&self) -> &'static str {
        SERVICE_NAME
    }

    fn handle(&self, req: &Request) -> Response {
        match http::route(ROUTES, req.method, &req.path) {
            RouteMatch::Found(Route::Index, _) => Response::ok(json!({
                "service": SERVICE_NAME,
                "endpoints": {"GET /health": "service health"},
            })),
            RouteMatch::Found(Route::Health, _) => http::health(self),
            other => http::route_error(other, req.method, &req.path),
        }
    }
}
