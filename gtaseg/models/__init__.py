"""timm ViTs and the checkpoints they are built from."""
from gtaseg.models.build import (ModelInfo, check_image_size, check_model_options, create_vit, load_model, model_info,
                                 save_model, set_drop_path)
from gtaseg.models.checkpoints import HEAD_PREFIX

__all__ = ["HEAD_PREFIX", "ModelInfo", "check_image_size", "check_model_options", "create_vit", "load_model",
           "model_info", "save_model", "set_drop_path"]
