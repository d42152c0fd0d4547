from srn.model.outputs import SRNOutputs
from srn.model.srn import SRN, build_model

__all__ = ["SRN", "SRNOutputs", "build_model"]
