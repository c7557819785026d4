"""The pruning engine: channel groups, exact FLOPs and budget, masks, alignment, extraction."""
from .align import AlignmentRegularizer
from .budget import BudgetClipper, KeepRule
from .export import ExportError, export_onnx, load_pruned, load_report, save_pruned
from .extract import extract_subnetwork
from .flops import FlopsModel, check_budget
from .importance import CRITERIA, group_importance, top_k_masks
from .masks import MaskError, MaskPlan, full_masks
from .structure import ChannelGroup, ChannelStructure, StructureError

__all__ = [n for n in dir() if not n.startswith("_")]
