//! The current problems of the source, each set and cleared by its own part (the forms API
//! client, the Kafka consumer), shown together in `/health` (503 while any is set).
//! [`Health`] holds a single problem: a part clearing its own would otherwise clear another's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use connector_common::telemetry::Health;

/// Which part a problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The Kafka consumer (broker errors).
    Kafka,
    /// The forms API (outage, refused credentials, answers that are not forms).
    FormsApi,
}

/// Problems by part, mirrored into a [`Health`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Problems {
    health: Health,
    set: Arc<Mutex<BTreeMap<Part, String>>>,
}

impl Problems {
    /// Problems reported through `health`.
    pub fn new(health: Health) -> Self {
        Self {
            health,
            set: Arc::default(),
        }
    }

    /// Sets (`Some`) or clears (`None`) the problem of `part`. The text must hold no secret.
    pub fn set(&self, part: Part, problem: Option<String>) {
        let mut set = self.set.lock().expect("problems lock");
        let changed = match problem {
            Some(p) => set.insert(part, p.clone()).as_ref() != Some(&p),
            None => set.remove(&part).is_some(),
        };
        if changed {
            let all: Vec<&str> = set.values().map(String::as_str).collect();
            self.health
                .set_problem((!all.is_empty()).then(|| all.join("; ")));
        }
    }

    /// Whether `part` has a problem now.
    pub fn has(&self, part: Part) -> bool {
        self.set.lock().expect("problems lock").contains_key(&part)
    }

    /// The health these problems go to.
    pub fn health(&self) -> &Health {
        &self.health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_clears_only_its_own_problem() {
        let h = Health::default();
        h.set_ready(true);
        let p = Problems::new(h.clone());
        p.set(Part::FormsApi, Some("api down".into()));
        p.set(Part::Kafka, Some("broker down".into()));
        assert_eq!(
            h.report(),
            (
                false,
                r#"{"status":"degraded","problem":"broker down; api down"}"#.into()
            )
        );
        p.set(Part::FormsApi, None);
        assert!(p.has(Part::Kafka) && !p.has(Part::FormsApi));
        assert_eq!(
            h.report(),
            (
                false,
                r#"{"status":"degraded","problem":"broker down"}"#.into()
            )
        );
        p.set(Part::Kafka, None);
        assert!(h.report().0);
    }
}
