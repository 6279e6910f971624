"""Everything a plugin author imports, in one place: `from ttscale.plugins import ...`.

A re-export, defined nowhere else: the contract (ttscale.protocols: what a plugin implements,
and the context, meter and verifier it is handed), the value types it reads and returns
(ttscale.types), the public base classes (VerifierBase; TreeSearchOptions and the tree-search
steps), CostMeter for measuring a part of a strategy's work, ConfigError for a user's mistake,
and the entry-point group of each kind of plugin (ENTRY_POINT_GROUPS). docs/plugins.md shows a
strategy, a verifier, a backend and a benchmark written against it, and how to install them.
"""

from __future__ import annotations

from ttscale.cost import CostMeter
from ttscale.errors import ConfigError
from ttscale.protocols import (
    AnswerTools,
    Backend,
    Benchmark,
    BoundVerifier,
    DraftingModel,
    EngineInfo,
    Meter,
    ModelInfo,
    PoolingBackend,
    PromptTemplated,
    PromptTokens,
    SampleBudget,
    SamplingExtras,
    SpeculativeEngine,
    Startable,
    Strategy,
    StrategyContext,
    StreamingBackend,
    TextSink,
    TextStreamingBackend,
    TokenStop,
    TraceMetadata,
    TrainedOnProblems,
    Verifier,
    VerifierNeed,
    WorkloadSized,
)
from ttscale.registry import ENTRY_POINT_GROUPS
from ttscale.strategies.tree_search import Beam, StepRules, TreeSearchOptions, expand, score, verifier_selections
from ttscale.types import (
    Candidate,
    ChatMessage,
    Completion,
    Cost,
    Generation,
    GenRequest,
    Grade,
    PoolRequest,
    PoolResult,
    Problem,
    SampleParams,
    Trace,
)
from ttscale.verifiers.base import VerifierBase

__all__ = [
    # the four kinds of plugin, and what a strategy and a verifier are handed
    "Strategy", "Verifier", "Backend", "Benchmark", "AnswerTools", "ModelInfo",
    "StrategyContext", "Meter", "BoundVerifier", "TraceMetadata",
    # optional capabilities (each with a default; see ttscale.protocols)
    "PoolingBackend", "PromptTokens", "EngineInfo", "WorkloadSized", "SpeculativeEngine", "DraftingModel",
    "StreamingBackend", "TokenStop", "TextStreamingBackend", "TextSink", "SamplingExtras", "Startable",
    "VerifierNeed", "TrainedOnProblems", "SampleBudget", "PromptTemplated",
    # value types
    "ChatMessage", "Problem", "SampleParams", "GenRequest", "Completion", "Generation",
    "PoolRequest", "PoolResult", "Candidate", "Trace", "Grade", "Cost",
    # public base classes and helpers
    "VerifierBase", "TreeSearchOptions", "StepRules", "Beam", "expand", "score", "verifier_selections",
    "CostMeter", "ConfigError", "ENTRY_POINT_GROUPS",
]
