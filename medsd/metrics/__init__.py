"""Evaluation metrics for synthetic medical images (see docs/evaluation.md).

Only numpy is imported here; torch, torchmetrics, scipy, scikit-image, open_clip and matplotlib are imported inside
the functions that need them.
"""

from .audit_gate import (
    AuditVerdict,
    MemorisationGateError,
    audit_card_section,
    audit_verdict,
    check_audit_for_push,
)
from .copy_search import PerceptualHash, RegisteredNCC, SearchResult
from .distribution import (
    distribution_metrics,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
    real_reference,
    robust_scale,
    scale_features,
    standardise,
)
from .diversity import (
    count_degenerate,
    degenerate_mask,
    degenerate_rule,
    mean_pairwise_ms_ssim,
    neighbour_corr_threshold,
    neighbour_correlation,
)
from .downstream import downstream_utility, train_classifier
from .evaluate import SECTIONS, EvalConfig, EvalInputs, SectionResult, evaluate
from .feature_stats import FeatureStats, frechet_distance_of_stats
from .features import (
    FeatureExtractor,
    MissingWeightsError,
    RadiomicsExtractor,
    available_extractors,
    extract_features,
    get_extractor,
    register_extractor,
)
from .io import ImageSet, load_image_set, load_subsampled
from .memorisation import memorisation_audit, ncc_matrix, nearest_by_ncc
from .paired import acutance, class_set_table, edge_sharpness, lpips, mae, ms_ssim, paired_metrics, psnr, ssim
from .planting import plant_copies, transform_copies
from .reader_study import (
    cohen_kappa,
    export_reader_study,
    fleiss_kappa,
    joint_agreement,
    render_scores_markdown,
    score_answer_sheets,
    score_reader_study,
)
from .subsample import stratified_subsample

__all__ = [
    "AuditVerdict",
    "MemorisationGateError",
    "audit_card_section",
    "audit_verdict",
    "check_audit_for_push",
    "PerceptualHash",
    "RegisteredNCC",
    "SearchResult",
    "plant_copies",
    "transform_copies",
    "stratified_subsample",
    "load_subsampled",
    "render_scores_markdown",
    "joint_agreement",
    "fleiss_kappa",
    "edge_sharpness",
    "neighbour_corr_threshold",
    "degenerate_rule",
    "scale_features",
    "robust_scale",
    "real_reference",
    "EvalConfig",
    "EvalInputs",
    "SECTIONS",
    "SectionResult",
    "FeatureExtractor",
    "FeatureStats",
    "frechet_distance_of_stats",
    "ImageSet",
    "MissingWeightsError",
    "RadiomicsExtractor",
    "acutance",
    "available_extractors",
    "class_set_table",
    "cohen_kappa",
    "count_degenerate",
    "degenerate_mask",
    "distribution_metrics",
    "downstream_utility",
    "evaluate",
    "export_reader_study",
    "extract_features",
    "frechet_distance",
    "get_extractor",
    "kernel_inception_distance",
    "load_image_set",
    "lpips",
    "mae",
    "mean_pairwise_ms_ssim",
    "memorisation_audit",
    "ms_ssim",
    "ncc_matrix",
    "nearest_by_ncc",
    "neighbour_correlation",
    "paired_metrics",
    "precision_recall",
    "psnr",
    "register_extractor",
    "score_answer_sheets",
    "score_reader_study",
    "ssim",
    "standardise",
    "train_classifier",
]
