from srn.model.srn import SRN, build_model

__all__ = ["SRN", "build_model"]
