"""Sample-quality metrics: FD / IS (fid_is), the VLB (nll), PF-ODE likelihoods (ode_nll), the digits classifier."""
