"""widedeep: Wide & Deep models for recommendation and click-through-rate prediction.

The public API; everything here is importable as ``widedeep.NAME``.
"""

from widedeep.bundle import Bundle, load_bundle, save_bundle, verify_bundle
from widedeep.config import (
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from widedeep.data.appstore import make_appstore
from widedeep.data.batch import Batch
from widedeep.data.datasets import load_adult
from widedeep.data.movielens import load_movielens
from widedeep.errors import (
    BundleError,
    CheckpointError,
    ConfigError,
    NotFittedError,
    SchemaError,
    WideDeepError,
)
from widedeep.features.layout import FeatureLayout, SparseField
from widedeep.features.preprocessor import EncodedTable, Preprocessor, TransformReport
from widedeep.features.schema import (
    BucketizedFeature,
    CategoricalFeature,
    CrossFeature,
    FeatureSchema,
    HashedFeature,
    LabelSpec,
    MultiCategoricalFeature,
    NumericFeature,
)
from widedeep.model.widedeep import WideDeep
from widedeep.optim import FTRL
from widedeep.promote import promote, promotion_decision
from widedeep.ranking import RankingResult, evaluate_ranking
from widedeep.recommend import top_k
from widedeep.retrieval import ItemCooccurrence, MostPopular
from widedeep.training.loop import TrainResult, train
from widedeep.warmstart import warm_start

__version__ = "0.1.0"

__all__ = [
    "FTRL",
    "Batch",
    "BucketizedFeature",
    "Bundle",
    "BundleError",
    "CategoricalFeature",
    "CheckpointError",
    "ConfigError",
    "CrossFeature",
    "DataConfig",
    "EarlyStoppingConfig",
    "EncodedTable",
    "FeatureLayout",
    "FeatureSchema",
    "HashedFeature",
    "ItemCooccurrence",
    "LabelSpec",
    "ModelConfig",
    "MostPopular",
    "MultiCategoricalFeature",
    "NotFittedError",
    "NumericFeature",
    "OptimizerConfig",
    "Preprocessor",
    "RankingResult",
    "RunConfig",
    "SchemaError",
    "SparseField",
    "TrainConfig",
    "TrainResult",
    "TransformReport",
    "WideDeep",
    "WideDeepError",
    "__version__",
    "evaluate_ranking",
    "load_adult",
    "load_bundle",
    "load_config",
    "load_movielens",
    "make_appstore",
    "promote",
    "promotion_decision",
    "save_bundle",
    "top_k",
    "train",
    "verify_bundle",
    "warm_start",
]
