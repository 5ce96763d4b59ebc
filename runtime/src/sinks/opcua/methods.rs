//! `[opcua] model_methods`: the model lifecycle's commands (`diffad model` over the control
//! socket) as methods of `VisionSystem/RecipeManagement`, for logged-in users only.
//!
//! Each method hands one control request (JSON) to the line and returns its JSON answer, so an
//! OPC UA client stages, shadows, promotes and rolls back exactly as `diffad model` does, with the
//! same checks (signature, graph shapes, self-test) and the same answers.

use opcua::nodes::MethodBuilder;
use opcua::server::node_manager::memory::SimpleNodeManager;
use opcua::server::ServerHandle;
use opcua::types::{
    Argument, DataTypeId, LocalizedText, NodeId, QualifiedName, StatusCode, Variant,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What the methods ask of the line: one control request (`{"cmd": ...}`), its answer.
pub type ModelCommands = Arc<
    dyn Fn(serde_json::Value) -> Pin<Box<dyn Future<Output = serde_json::Value> + Send>>
        + Send
        + Sync,
>;

/// A method's one input: its name and data type.
type Input = Option<(&'static str, DataTypeId)>;

/// The methods: browse name, the control request's `cmd`, and its one input, if any.
const METHODS: [(&str, &str, Input); 5] = [
    ("StageModel", "stage", Some(("File", DataTypeId::String))),
    ("Shadow", "shadow", Some(("Parts", DataTypeId::UInt64))),
    ("Report", "report", None),
    ("Promote", "promote", None),
    ("Rollback", "rollback", None),
];

/// Whether `id` is one of the model methods (the authenticator keeps them from anonymous users).
pub(super) fn is_model_method(id: &NodeId) -> bool {
    let opcua::types::Identifier::String(s) = &id.identifier else {
        return false;
    };
    METHODS
        .iter()
        .any(|(name, _, _)| s.as_ref() == format!("VisionSystem.RecipeManagement.{name}"))
}

fn argument(name: &str, dt: DataTypeId, description: &str) -> Argument {
    Argument {
        name: name.into(),
        data_type: dt.into(),
        value_rank: -1,
        array_dimensions: None,
        description: LocalizedText::new("", description),
    }
}

/// The control request a call makes.
fn request(cmd: &str, args: &[Variant]) -> Result<serde_json::Value, StatusCode> {
    Ok(match (cmd, args) {
        ("stage", [Variant::String(f)]) => {
            serde_json::json!({"cmd": "stage", "file": f.as_ref()})
        }
        // 0 parts: the control socket's default (until promoted or rolled back).
        ("shadow", [Variant::UInt64(0)]) => serde_json::json!({"cmd": "shadow"}),
        ("shadow", [Variant::UInt64(n)]) => serde_json::json!({"cmd": "shadow", "parts": n}),
        (_, []) => serde_json::json!({ "cmd": cmd }),
        _ => return Err(StatusCode::BadInvalidArgument),
    })
}

/// Where the methods find the line's commands: empty until the line runs (the server starts
/// before the engine loads).
pub type Answerer = Arc<std::sync::OnceLock<ModelCommands>>;

/// Insert the methods under `VisionSystem/RecipeManagement` of the line's namespace `line_ns`;
/// they answer through the returned slot once it is set, waited for on `rt` off its worker.
pub(super) fn add(
    handle: &ServerHandle,
    line_ns: &str,
    rt: tokio::runtime::Handle,
) -> Result<Answerer, String> {
    let mgr = handle
        .node_managers()
        .get_by_name::<SimpleNodeManager>(super::model::LINE_MANAGER)
        .ok_or("no line node manager")?;
    let ns = |uri: &str| {
        handle
            .get_namespace_index(uri)
            .ok_or_else(|| format!("namespace {uri} not registered"))
    };
    let (ln, mv) = (ns(line_ns)?, ns(super::MV_NAMESPACE)?);
    let answerer: Answerer = Arc::default();
    let parent = NodeId::new(ln, "VisionSystem.RecipeManagement");
    let outputs = [
        argument("Ok", DataTypeId::Boolean, "the line did it"),
        argument(
            "Answer",
            DataTypeId::String,
            "the control socket's JSON answer",
        ),
    ];
    for (name, cmd, input) in METHODS {
        let id = NodeId::new(ln, format!("VisionSystem.RecipeManagement.{name}"));
        {
            let mut space = mgr.address_space().write();
            let mut b = MethodBuilder::new(&id, QualifiedName::new(mv, name), name)
                .component_of(parent.clone())
                .executable(true)
                .user_executable(true)
                .output_args(
                    &mut *space,
                    &NodeId::new(ln, format!("VisionSystem.RecipeManagement.{name}.Out")),
                    &outputs,
                );
            if let Some((arg, dt)) = input {
                let what = match cmd {
                    "stage" => {
                        "a model file on the device, checked as `diffad model stage` checks it"
                    }
                    _ => "parts to shadow (0: until promoted or rolled back)",
                };
                b = b.input_args(
                    &mut *space,
                    &NodeId::new(ln, format!("VisionSystem.RecipeManagement.{name}.In")),
                    &[argument(arg, dt, what)],
                );
            }
            b.insert(&mut *space);
        }
        let (answerer, rt) = (answerer.clone(), rt.clone());
        mgr.inner().add_method_callback(id, move |args| {
            let req = request(cmd, args)?;
            let answer = match answerer.get() {
                None => serde_json::json!({"ok": false, "error": "the line is starting: the model methods answer once its engine has loaded"}),
                // Staging loads and self-tests a model (seconds): the runtime's other tasks
                // move to another thread meanwhile, so publishing and the page go on.
                Some(commands) => tokio::task::block_in_place(|| rt.block_on(commands(req))),
            };
            let ok = answer.get("ok").and_then(serde_json::Value::as_bool) == Some(true);
            log::info!(target: "diffad::sinks::opcua", "opcua method {name}: {answer}");
            Ok(vec![ok.into(), answer.to_string().into()])
        });
    }
    Ok(answerer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_become_the_control_sockets_requests_and_wrong_arguments_are_refused() {
        assert_eq!(
            request("stage", &[Variant::from("/m/x.onnx")]).unwrap(),
            serde_json::json!({"cmd": "stage", "file": "/m/x.onnx"})
        );
        assert_eq!(
            request("shadow", &[Variant::UInt64(0)]).unwrap(),
            serde_json::json!({"cmd": "shadow"})
        );
        assert_eq!(
            request("shadow", &[Variant::UInt64(40)]).unwrap(),
            serde_json::json!({"cmd": "shadow", "parts": 40})
        );
        assert_eq!(
            request("promote", &[]).unwrap(),
            serde_json::json!({"cmd": "promote"})
        );
        assert_eq!(
            request("stage", &[Variant::UInt64(1)]),
            Err(StatusCode::BadInvalidArgument)
        );
        assert_eq!(
            request("promote", &[Variant::from("x")]),
            Err(StatusCode::BadInvalidArgument)
        );
        assert!(is_model_method(&NodeId::new(
            3,
            "VisionSystem.RecipeManagement.Promote"
        )));
        assert!(!is_model_method(&NodeId::new(
            3,
            "VisionSystem.Health.Ready"
        )));
    }
}
