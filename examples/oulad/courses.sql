-- One course per module presentation (e.g. BBB_2014J). Categories: the
-- module's domain from the OULAD paper, then the kinds of online activity
-- the presentation offers, pipe-separated.
SELECT c.code_module || '_' || c.code_presentation AS courseId,
       c.code_module || ' ' || c.code_presentation AS title,
       CASE WHEN c.code_module IN ('AAA', 'BBB', 'GGG')
            THEN 'Social Sciences' ELSE 'STEM' END
         || COALESCE('|' || (
              SELECT group_concat(activity_type, '|')
              FROM (SELECT DISTINCT v.activity_type
                    FROM vle v
                    WHERE v.code_module = c.code_module
                      AND v.code_presentation = c.code_presentation
                    ORDER BY v.activity_type)
            ), '') AS categories
FROM courses c
ORDER BY courseId
