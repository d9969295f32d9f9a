"""The pure evaluator: facts, three-valued rules, dosing and the result contract."""
