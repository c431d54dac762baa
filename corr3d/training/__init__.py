from corr3d.training.module import MultiviewFinetuneModule

__all__ = ["MultiviewFinetuneModule"]
