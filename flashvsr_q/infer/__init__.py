"""flashvsr_q.infer"""
