"""Fine-tuning tasks, one module each; registered by name in :data:`attnlab.finetune.recipe.TASKS`."""
