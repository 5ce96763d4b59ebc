//! The address space: the Machine Vision types this line needs (in the specification's
//! namespace, by their browse names) and the line's `VisionSystem` instance, kept current from
//! the bus's records.

use super::{OpcuaFacts, MV_NAMESPACE};
use crate::events::{Event as LineEvent, Outcome, PartEvent, Record};
use opcua::nodes::{
    BaseEventType, Event, EventNotifier, ObjectBuilder, ObjectTypeBuilder, VariableBuilder,
};
use opcua::server::node_manager::memory::SimpleNodeManager;
use opcua::server::{ServerHandle, SubscriptionCache};
use opcua::types::event_field::EventField;
use opcua::types::{
    AttributeId, ByteString, DataTypeId, DataValue, DateTime, LocalizedText, NodeId, NumericRange,
    ObjectId, ObjectTypeId, QualifiedName, UAString, VariableTypeId, Variant,
};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The node manager of the specification's types.
pub(super) const MV_MANAGER: &str = "diffad-machinevision";
/// The node manager of the line's instance.
pub(super) const LINE_MANAGER: &str = "diffad-line";

/// The namespace of one line's instance nodes.
pub(super) fn line_namespace(line: &str) -> String {
    // Not the application URI: the server keeps namespace 1 (its own) for that.
    format!("urn:diffad-edge:{line}:vision")
}

/// The top states of the Machine Vision state machine (VisionStateMachineType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VisionState {
    /// Started, not yet ready: the engine loading and self-testing (a TensorRT build takes
    /// minutes), the first heartbeat not in.
    Preoperational,
    /// Ready: inspecting parts.
    Operational,
    /// Was ready, a fault holds `ready` low.
    Error,
    /// The line stopped.
    Halted,
}

impl VisionState {
    /// The state a heartbeat leads to from `self`: the line's last heartbeat (fault `stopped`)
    /// halts it for good, `ready` makes it operational, `ready` low after it was once high is
    /// an error; before the first `ready` it stays preoperational.
    pub(super) fn after_heartbeat(self, ready: bool, faults: &[String]) -> Self {
        match self {
            Self::Halted => Self::Halted,
            _ if faults.iter().any(|f| f == "stopped") => Self::Halted,
            _ if ready => Self::Operational,
            Self::Preoperational => Self::Preoperational,
            _ => Self::Error,
        }
    }
}

/// Fields of a `ResultReady` event and of the latest result, in this order; the first column is
/// the browse name (in the Machine Vision namespace), the second its data type.
const RESULT_FIELDS: [(&str, DataTypeId); 12] = [
    ("ResultId", DataTypeId::String),
    ("PartId", DataTypeId::String),
    ("Run", DataTypeId::String),
    ("RecipeId", DataTypeId::String),
    ("Outcome", DataTypeId::String),
    ("Rejected", DataTypeId::Boolean),
    ("FailSafe", DataTypeId::Boolean),
    ("Score", DataTypeId::Double),
    ("Threshold", DataTypeId::Double),
    ("ProcessingTimeMs", DataTypeId::Double),
    ("TriggerTime", DataTypeId::DateTime),
    ("Reason", DataTypeId::String),
];

const COUNTERS: [&str; 10] = [
    "Triggers",
    "Passes",
    "Rejects",
    "FaultRejects",
    "FaultPasses",
    "Pending",
    "Skipped",
    "LateVerdicts",
    "InspectErrors",
    "EventsDropped",
];

/// The nodes the task writes, and what it needs to write them.
pub(super) struct Model {
    line_mgr: Arc<SimpleNodeManager>,
    subs: Arc<SubscriptionCache>,
    mv: u16,
    ln: u16,
    vision_system: NodeId,
    result_type: NodeId,
    alarm_type: NodeId,
    state: VisionState,
    recipes: BTreeSet<String>,
    active: String,
    heartbeats: u64,
    event_seq: u64,
}

fn ln_id(ln: u16, path: &str) -> NodeId {
    NodeId::new(ln, format!("VisionSystem.{path}"))
}

impl Model {
    /// Insert the types and the instance; must run before the server does, so that the types
    /// are in its type tree (event filters match subtypes through it).
    pub(super) fn build(handle: &ServerHandle, facts: &OpcuaFacts) -> Result<Self, String> {
        let mgrs = handle.node_managers();
        let mv_mgr = mgrs
            .get_by_name::<SimpleNodeManager>(MV_MANAGER)
            .ok_or("no Machine Vision node manager")?;
        let line_mgr = mgrs
            .get_by_name::<SimpleNodeManager>(LINE_MANAGER)
            .ok_or("no line node manager")?;
        let mv = handle
            .get_namespace_index(MV_NAMESPACE)
            .ok_or("Machine Vision namespace not registered")?;
        let ln = handle
            .get_namespace_index(&line_namespace(&facts.line))
            .ok_or("line namespace not registered")?;
        let t = |name: &str| NodeId::new(mv, name.to_string());
        let result_type = t("ResultReadyEventType");
        let alarm_type = NodeId::new(ln, "LineAlarmEventType");
        {
            let mut space = mv_mgr.address_space().write();
            ObjectTypeBuilder::new(
                &t("VisionSystemType"),
                qn(mv, "VisionSystemType"),
                "VisionSystemType",
            )
            .subtype_of(ObjectTypeId::BaseObjectType)
            .insert(&mut *space);
            ObjectTypeBuilder::new(
                &t("VisionStateMachineType"),
                qn(mv, "VisionStateMachineType"),
                "VisionStateMachineType",
            )
            .subtype_of(ObjectTypeId::FiniteStateMachineType)
            .insert(&mut *space);
            ObjectTypeBuilder::new(
                &result_type,
                qn(mv, "ResultReadyEventType"),
                "ResultReadyEventType",
            )
            .subtype_of(ObjectTypeId::BaseEventType)
            .insert(&mut *space);
            for (name, dt) in RESULT_FIELDS {
                VariableBuilder::new(
                    &t(&format!("ResultReadyEventType.{name}")),
                    qn(mv, name),
                    name,
                )
                .data_type(dt)
                .property_of(result_type.clone())
                .has_type_definition(VariableTypeId::PropertyType)
                .has_modelling_rule(ObjectId::ModellingRule_Mandatory)
                .insert(&mut *space);
            }
        }
        let vs = NodeId::new(ln, "VisionSystem");
        {
            let mut space = line_mgr.address_space().write();
            ObjectTypeBuilder::new(
                &alarm_type,
                qn(ln, "LineAlarmEventType"),
                "LineAlarmEventType",
            )
            .subtype_of(ObjectTypeId::BaseEventType)
            .insert(&mut *space);
            for (name, dt) in [
                ("Code", DataTypeId::String),
                ("Active", DataTypeId::Boolean),
                ("Part", DataTypeId::UInt64),
            ] {
                VariableBuilder::new(
                    &NodeId::new(ln, format!("LineAlarmEventType.{name}")),
                    qn(ln, name),
                    name,
                )
                .data_type(dt)
                .property_of(alarm_type.clone())
                .has_type_definition(VariableTypeId::PropertyType)
                .insert(&mut *space);
            }
            ObjectBuilder::new(
                &vs,
                qn(ln, "VisionSystem"),
                format!("VisionSystem {}", facts.line),
            )
            .has_type_definition(t("VisionSystemType"))
            .organized_by(ObjectId::ObjectsFolder)
            .event_notifier(EventNotifier::SUBSCRIBE_TO_EVENTS)
            .insert(&mut *space);
            let object =
                |space: &mut opcua::server::address_space::AddressSpace, name: &str, ty: NodeId| {
                    ObjectBuilder::new(&ln_id(ln, name), qn(mv, name), name)
                        .has_type_definition(ty)
                        .component_of(vs.clone())
                        .insert(space);
                };
            object(
                &mut space,
                "VisionStateMachine",
                t("VisionStateMachineType"),
            );
            object(
                &mut space,
                "ResultManagement",
                ObjectTypeId::BaseObjectType.into(),
            );
            object(
                &mut space,
                "RecipeManagement",
                ObjectTypeId::BaseObjectType.into(),
            );
            object(&mut space, "Counters", ObjectTypeId::BaseObjectType.into());
            object(&mut space, "Health", ObjectTypeId::BaseObjectType.into());
            let var = |space: &mut opcua::server::address_space::AddressSpace,
                       parent: &str,
                       name: &str,
                       dt: DataTypeId,
                       rank: i32,
                       value: Variant| {
                VariableBuilder::new(&ln_id(ln, &format!("{parent}.{name}")), qn(mv, name), name)
                    .data_type(dt)
                    .value_rank(rank)
                    .value(value)
                    .component_of(ln_id(ln, parent))
                    .has_type_definition(VariableTypeId::BaseDataVariableType)
                    .insert(space);
            };
            var(
                &mut space,
                "VisionStateMachine",
                "CurrentState",
                DataTypeId::LocalizedText,
                -1,
                LocalizedText::new("", "Preoperational").into(),
            );
            for (name, dt) in RESULT_FIELDS {
                var(&mut space, "ResultManagement", name, dt, -1, Variant::Empty);
            }
            var(
                &mut space,
                "ResultManagement",
                "ResultCount",
                DataTypeId::UInt64,
                -1,
                0u64.into(),
            );
            var(
                &mut space,
                "RecipeManagement",
                "ActiveRecipeId",
                DataTypeId::String,
                -1,
                facts.model_id.clone().into(),
            );
            var(
                &mut space,
                "RecipeManagement",
                "Recipes",
                DataTypeId::String,
                1,
                Vec::from_iter(
                    (!facts.model_id.is_empty()).then(|| UAString::from(facts.model_id.clone())),
                )
                .into(),
            );
            for c in COUNTERS {
                var(
                    &mut space,
                    "Counters",
                    c,
                    DataTypeId::UInt64,
                    -1,
                    0u64.into(),
                );
            }
            var(
                &mut space,
                "Health",
                "Ready",
                DataTypeId::Boolean,
                -1,
                false.into(),
            );
            var(
                &mut space,
                "Health",
                "Faults",
                DataTypeId::String,
                1,
                Vec::<UAString>::new().into(),
            );
            var(
                &mut space,
                "Health",
                "Heartbeat",
                DataTypeId::UInt64,
                -1,
                0u64.into(),
            );
            var(
                &mut space,
                "Health",
                "LoginsRefused",
                DataTypeId::UInt64,
                -1,
                0u64.into(),
            );
            for d in ["DriftMedian", "DriftShiftStd", "DriftRejectRate"] {
                var(
                    &mut space,
                    "Health",
                    d,
                    DataTypeId::Double,
                    -1,
                    Variant::Empty,
                );
            }
        }
        Ok(Self {
            subs: handle.subscriptions().clone(),
            line_mgr,
            mv,
            ln,
            vision_system: vs,
            result_type,
            alarm_type,
            state: VisionState::Preoperational,
            recipes: BTreeSet::from_iter(
                (!facts.model_id.is_empty()).then(|| facts.model_id.clone()),
            ),
            active: facts.model_id.clone(),
            heartbeats: 0,
            event_seq: 0,
        })
    }

    fn set(&self, values: Vec<(NodeId, Variant)>) {
        let values: Vec<(NodeId, DataValue)> = values
            .into_iter()
            .map(|(id, v)| (id, DataValue::new_now(v)))
            .collect();
        if let Err(e) = self.line_mgr.set_values(
            &self.subs,
            values.iter().map(|(id, v)| (id, None, v.clone())),
        ) {
            log::warn!("opcua: setting values: {e}");
        }
    }

    /// Show a new top state (once per change).
    pub(super) fn set_state(&mut self, s: VisionState) {
        if self.state == s {
            return;
        }
        self.state = s;
        self.write_state();
    }

    /// Write the shown state again, with a fresh timestamp. async-opcua (0.19) holds a change
    /// that comes within a monitored item's sampling interval of the previous one until the
    /// item is notified again, so a last change (`Halted` right after `Error`) would never
    /// reach a client that samples at 100 ms; writing it again releases it. An unchanged value
    /// is filtered out by the server and costs the clients nothing.
    pub(super) fn write_state(&self) {
        self.set(vec![(
            ln_id(self.ln, "VisionStateMachine.CurrentState"),
            LocalizedText::new("", &format!("{:?}", self.state)).into(),
        )]);
    }

    /// Show the count of refused logins.
    pub(super) fn show_logins_refused(&self, n: u64) {
        self.set(vec![(ln_id(self.ln, "Health.LoginsRefused"), n.into())]);
    }

    fn next_event_id(&mut self, run: &str) -> ByteString {
        self.event_seq += 1;
        ByteString::from(format!("{run}/{}", self.event_seq).into_bytes())
    }

    /// Show one record; true when it was a part's result.
    pub(super) fn show(&mut self, rec: &Record, anchor: (std::time::SystemTime, u64)) -> bool {
        match &rec.event {
            LineEvent::Part(p) => {
                self.result(rec, p, anchor);
                true
            }
            LineEvent::Heartbeat(h) => {
                self.heartbeats += 1;
                let c = &h.counters;
                let counts = [
                    c.triggers,
                    c.passes,
                    c.rejects,
                    c.fault_rejects,
                    c.fault_passes,
                    c.pending,
                    c.skipped,
                    c.late_verdicts,
                    c.inspect_errors,
                    c.events_dropped,
                ];
                let mut v: Vec<(NodeId, Variant)> = COUNTERS
                    .iter()
                    .zip(counts)
                    .map(|(n, x)| (ln_id(self.ln, &format!("Counters.{n}")), x.into()))
                    .collect();
                v.push((ln_id(self.ln, "Health.Ready"), h.ready.into()));
                v.push((
                    ln_id(self.ln, "Health.Faults"),
                    h.faults
                        .iter()
                        .map(|f| UAString::from(f.as_str()))
                        .collect::<Vec<_>>()
                        .into(),
                ));
                v.push((ln_id(self.ln, "Health.Heartbeat"), self.heartbeats.into()));
                if let Some(d) = &h.drift {
                    v.push((ln_id(self.ln, "Health.DriftMedian"), d.median.into()));
                    v.push((
                        ln_id(self.ln, "Health.DriftShiftStd"),
                        d.shift_std.map_or(Variant::Empty, Variant::from),
                    ));
                    v.push((
                        ln_id(self.ln, "Health.DriftRejectRate"),
                        d.reject_rate.into(),
                    ));
                }
                self.set(v);
                self.set_state(self.state.after_heartbeat(h.ready, &h.faults));
                false
            }
            LineEvent::Alarm(a) => {
                let base = self.base_event(
                    &rec.run,
                    self.alarm_type.clone(),
                    format!(
                        "{} {}: {}",
                        a.code,
                        if a.active { "raised" } else { "cleared" },
                        a.message
                    ),
                    if a.active { 700 } else { 300 },
                    DateTime::now(),
                );
                let evt = FieldsEvent {
                    base,
                    ns: self.ln,
                    fields: vec![
                        ("Code", a.code.clone().into()),
                        ("Active", a.active.into()),
                        ("Part", a.part.map_or(Variant::Empty, Variant::from)),
                    ],
                };
                self.subs
                    .notify_events([(&evt as &dyn Event, &self.vision_system)].into_iter());
                false
            }
            LineEvent::Shadow(s) => {
                if self.recipes.insert(s.model.to_string()) {
                    self.show_recipes();
                }
                false
            }
            _ => false,
        }
    }

    /// `id` decides the parts now (loaded at start, promoted or rolled back): the active
    /// recipe, and one of the recipes.
    pub(super) fn set_active_recipe(&mut self, id: &str) {
        if id != self.active {
            self.active = id.to_string();
            self.recipes.insert(self.active.clone());
            self.show_recipes();
        }
    }

    fn show_recipes(&self) {
        self.set(vec![
            (
                ln_id(self.ln, "RecipeManagement.Recipes"),
                self.recipes
                    .iter()
                    .map(|r| UAString::from(r.as_str()))
                    .collect::<Vec<_>>()
                    .into(),
            ),
            (
                ln_id(self.ln, "RecipeManagement.ActiveRecipeId"),
                self.active.clone().into(),
            ),
        ]);
    }

    fn base_event(
        &mut self,
        run: &str,
        ty: NodeId,
        message: String,
        severity: u16,
        time: DateTime,
    ) -> BaseEventType {
        BaseEventType {
            event_id: self.next_event_id(run),
            event_type: ty,
            source_node: self.vision_system.clone(),
            source_name: "VisionSystem".into(),
            time,
            receive_time: DateTime::now(),
            message: LocalizedText::new("", &message),
            severity,
            ..Default::default()
        }
    }

    fn result(&mut self, rec: &Record, p: &PartEvent, anchor: (std::time::SystemTime, u64)) {
        if let Some(m) = &p.model {
            self.set_active_recipe(m);
        }
        let trigger = wall_time(anchor, p.trigger_ns);
        let outcome = match p.outcome {
            Outcome::Pass => "pass",
            Outcome::Reject => "reject",
            Outcome::FaultReject => "fault_reject",
            Outcome::FaultPass => "fault_pass",
        };
        let fail_safe = matches!(p.outcome, Outcome::FaultReject | Outcome::FaultPass);
        let values: Vec<Variant> = vec![
            format!("{}/{}", rec.run, p.part).into(),
            p.part.to_string().into(),
            rec.run.to_string().into(),
            p.model.as_deref().unwrap_or("").into(),
            outcome.into(),
            p.outcome.rejects().into(),
            fail_safe.into(),
            p.score.map_or(Variant::Empty, |s| f64::from(s).into()),
            f64::from(p.threshold).into(),
            p.latency_ms.map_or(Variant::Empty, Variant::from),
            trigger.into(),
            p.reason.clone().unwrap_or_default().into(),
        ];
        let mut latest: Vec<(NodeId, Variant)> = RESULT_FIELDS
            .iter()
            .zip(values.iter())
            .map(|((n, _), v)| (ln_id(self.ln, &format!("ResultManagement.{n}")), v.clone()))
            .collect();
        latest.push((
            ln_id(self.ln, "ResultManagement.ResultCount"),
            p.part.into(),
        ));
        self.set(latest);
        let message = match (&p.reason, fail_safe) {
            (Some(r), true) => format!("part {} {outcome} (fail-safe: {r})", p.part),
            _ => format!("part {} {outcome}", p.part),
        };
        let base = self.base_event(
            &rec.run,
            self.result_type.clone(),
            message,
            if fail_safe { 600 } else { 100 },
            trigger,
        );
        let evt = FieldsEvent {
            base,
            ns: self.mv,
            fields: RESULT_FIELDS
                .iter()
                .zip(values)
                .map(|((n, _), v)| (*n, v))
                .collect(),
        };
        self.subs
            .notify_events([(&evt as &dyn Event, &self.vision_system)].into_iter());
    }
}

/// The wall time of line-clock time `t_ns`, given one instant on both clocks.
fn wall_time(anchor: (std::time::SystemTime, u64), t_ns: u64) -> DateTime {
    /// 100 ns ticks from 1601-01-01 (OPC UA's epoch) to 1970-01-01.
    const UNIX_EPOCH_TICKS: i128 = 116_444_736_000_000_000;
    let unix_ns = anchor
        .0
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
        + (i128::from(t_ns) - i128::from(anchor.1));
    DateTime::from((unix_ns / 100 + UNIX_EPOCH_TICKS) as i64)
}

fn qn(ns: u16, name: &str) -> QualifiedName {
    QualifiedName::new(ns, name)
}

/// An event of one of our types: the base event's fields and our own, by browse name.
#[derive(Debug)]
struct FieldsEvent {
    base: BaseEventType,
    /// Namespace of the fields' browse names.
    ns: u16,
    fields: Vec<(&'static str, Variant)>,
}

impl FieldsEvent {
    fn own(&self, path: &[QualifiedName]) -> Option<Variant> {
        let [name] = path else { return None };
        if name.namespace_index != self.ns {
            return None;
        }
        self.fields
            .iter()
            .find(|(n, _)| *n == name.name.as_ref())
            .map(|(_, v)| v.clone())
    }
}

impl EventField for FieldsEvent {
    fn get_value(
        &self,
        attribute_id: AttributeId,
        index_range: &NumericRange,
        remaining_path: &[QualifiedName],
    ) -> Variant {
        if attribute_id != AttributeId::Value {
            return Variant::Empty;
        }
        self.own(remaining_path).unwrap_or_else(|| {
            self.base
                .get_value(attribute_id, index_range, remaining_path)
        })
    }
}

impl Event for FieldsEvent {
    fn get_field(
        &self,
        type_definition_id: &NodeId,
        attribute_id: AttributeId,
        index_range: &NumericRange,
        browse_path: &[QualifiedName],
    ) -> Variant {
        // Clients name a field by the type that declares it, or (asyncua) by BaseEventType for
        // every field; either finds ours by browse name, then the base type's.
        if type_definition_id == &self.base.event_type
            || type_definition_id == &ObjectTypeId::BaseEventType
        {
            self.get_value(attribute_id, index_range, browse_path)
        } else {
            self.base
                .get_field(type_definition_id, attribute_id, index_range, browse_path)
        }
    }

    fn time(&self) -> &DateTime {
        &self.base.time
    }

    fn event_type_id(&self) -> &NodeId {
        &self.base.event_type
    }
}

#[cfg(test)]
mod tests {
    use super::VisionState::{self, *};

    fn walk(beats: &[(bool, &[&str])]) -> Vec<VisionState> {
        let mut s = Preoperational;
        beats
            .iter()
            .map(|(ready, faults)| {
                let faults: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
                s = s.after_heartbeat(*ready, &faults);
                s
            })
            .collect()
    }

    #[test]
    fn heartbeats_drive_the_state_machine_and_the_last_one_halts_it() {
        assert_eq!(
            walk(&[
                (false, &["camera_stalled"]),
                (true, &[]),
                (false, &["camera_stalled"]),
                (true, &[]),
                (false, &["stopped"]),
                (true, &[]),
            ]),
            [
                Preoperational,
                Operational,
                Error,
                Operational,
                Halted,
                Halted
            ]
        );
        // A line that stops before it was ever ready halts from Preoperational.
        assert_eq!(walk(&[(false, &["stopped"])]), [Halted]);
    }
}
