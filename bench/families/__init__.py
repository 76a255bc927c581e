"""Model families: each module declares a FamilySpec (bench.families.spec)."""
