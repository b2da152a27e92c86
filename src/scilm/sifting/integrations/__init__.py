"""Framework integrations under SageMaker smart sifting's module path (``smart_sifting.integrations``).

:mod:`.trainer` needs ``transformers``; it is imported only when used.
"""
