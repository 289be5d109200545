from .fine_grained_correspondence import FineGrainedCorrespondence

__all__ = ['FineGrainedCorrespondence']
