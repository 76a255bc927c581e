"""The papers' own mathematics: Analytic-DPM, iDDPM, DDGM, EDM, NCSN and score-SDE's VP SDE."""
