"""Shared feature services under every stage: the frozen backbone, the reference bank with its alignment, the coreset.

Why a floor of its own: Stage I learns components on backbone features, Stage II associates references and maps
residuals with the bank, Stage III trains and predicts with both; none of the stages should reach into another.
"""
