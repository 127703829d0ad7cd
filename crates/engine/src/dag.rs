//! The stage graph: edges from a stage's output to the stages that read it.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::manifest::{InputRef, Manifest, StageDecl};

/// Dependency graph over a manifest's stages (names in file order).
pub struct Dag {
    graph: DiGraph<String, String>,
    index: BTreeMap<String, NodeIndex>,
}

impl Dag {
    pub fn new(manifest: &Manifest) -> Dag {
        Self::from_stages(&manifest.stages)
    }

    fn from_stages(stages: &[StageDecl]) -> Dag {
        let mut graph = DiGraph::new();
        let mut index = BTreeMap::new();
        for s in stages {
            index.insert(s.name.clone(), graph.add_node(s.name.clone()));
        }
        for s in stages {
            for (input, r) in &s.inputs {
                if let InputRef::Stage { stage, output } = r {
                    if let (Some(&from), Some(&to)) = (index.get(stage), index.get(&s.name)) {
                        graph.add_edge(from, to, format!("{output} → {input}"));
                    }
                }
            }
        }
        Dag { graph, index }
    }

    /// Stage names in an order where every stage comes after what it reads; ties keep file order.
    pub fn topo_order(&self) -> Vec<String> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        // Kahn's algorithm choosing the earliest-declared ready node, for stable output.
        while order.len() < self.graph.node_count() {
            let next = self
                .graph
                .node_indices()
                .filter(|n| !done.contains(n))
                .find(|&n| self.graph.neighbors_directed(n, petgraph::Incoming).all(|p| done.contains(&p)))
                .expect("manifest validation rejects cycles");
            done.insert(next);
            order.push(self.graph[next].clone());
        }
        order
    }

    /// Direct upstream stages.
    pub fn parents(&self, stage: &str) -> Vec<String> {
        self.neighbors(stage, petgraph::Incoming)
    }

    pub fn children(&self, stage: &str) -> Vec<String> {
        self.neighbors(stage, petgraph::Outgoing)
    }

    fn neighbors(&self, stage: &str, dir: petgraph::Direction) -> Vec<String> {
        let Some(&n) = self.index.get(stage) else { return Vec::new() };
        let mut v: Vec<_> = self.graph.neighbors_directed(n, dir).map(|m| self.graph[m].clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// `stage` and everything it depends on, transitively.
    pub fn ancestors_inclusive(&self, stage: &str) -> BTreeSet<String> {
        self.closure(stage, petgraph::Incoming)
    }

    /// `stage` and everything that depends on it, transitively.
    pub fn descendants_inclusive(&self, stage: &str) -> BTreeSet<String> {
        self.closure(stage, petgraph::Outgoing)
    }

    fn closure(&self, stage: &str, dir: petgraph::Direction) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![stage.to_string()];
        while let Some(s) = stack.pop() {
            if seen.insert(s.clone()) {
                stack.extend(self.neighbors(&s, dir));
            }
        }
        seen
    }

    pub fn edges(&self) -> Vec<(String, String, String)> {
        self.graph
            .edge_indices()
            .filter_map(|e| {
                let (a, b) = self.graph.edge_endpoints(e)?;
                Some((self.graph[a].clone(), self.graph[b].clone(), self.graph[e].clone()))
            })
            .collect()
    }
}

/// A dependency cycle as stage names (first repeated at the end), if there is one.
pub fn find_cycle(stages: &[StageDecl]) -> Result<(), Vec<String>> {
    let dag = Dag::from_stages(stages);
    if toposort(&dag.graph, None).is_ok() {
        return Ok(());
    }
    for scc in tarjan_scc(&dag.graph) {
        let self_loop = scc.len() == 1 && dag.graph.contains_edge(scc[0], scc[0]);
        if scc.len() > 1 || self_loop {
            let mut names: Vec<String> = scc.iter().rev().map(|&n| dag.graph[n].clone()).collect();
            names.push(names[0].clone());
            return Err(names);
        }
    }
    Ok(())
}
