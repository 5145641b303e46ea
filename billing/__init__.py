"""Billing domain and storage for Prepaid AAA."""
