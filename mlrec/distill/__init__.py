"""Cross-lingual alignment (multilingual distillation on parallel text), recommendation
distillation (teacher recommender -> student), and xMIND's cross-lingual transfer protocol."""
