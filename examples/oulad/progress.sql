-- A student's progress in a module presentation: the mean of their
-- assessment scores (0-100). Missing scores ('?' or empty) are left out;
-- so is a presentation where the student has no score at all.
SELECT sa.id_student AS studentId,
       a.code_module || '_' || a.code_presentation AS courseId,
       ROUND(AVG(CAST(sa.score AS REAL)), 2) AS progress
FROM studentAssessment sa
JOIN assessments a ON a.id_assessment = sa.id_assessment
WHERE sa.score NOT IN ('', '?')
GROUP BY sa.id_student, a.code_module, a.code_presentation
ORDER BY studentId, courseId
